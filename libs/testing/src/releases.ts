// Release manifests for tests and benchmarks that never download the image (the fast
// simulated fleet): valid and signable, with a digest derived from version and board.
import { createHash } from "node:crypto";
import { events } from "@ferry/proto";
import { MANIFEST_TYPE } from "@ferry/release";

export function placeholderManifest(version: string, o: { board?: string; compressedSize?: number; rawSize?: number } = {}): events.ReleaseManifest {
  const board = o.board ?? "ls1046a";
  const digest = createHash("sha256").update(`${version}/${board}`).digest("hex");
  return {
    type: MANIFEST_TYPE,
    version,
    images: [
      {
        board,
        arch: "arm64",
        url: `http://origin.invalid/${version}-${board}.img.zst`,
        format: events.Compression.COMPRESSION_ZSTD,
        compressedSize: o.compressedSize ?? 1000 + version.length,
        compressedSha256: digest,
        rawSize: o.rawSize ?? 4000,
        rawSha256: digest,
      },
    ],
    allowedFrom: [],
    notes: "",
    expires: undefined,
    issuedAt: undefined,
  };
}
