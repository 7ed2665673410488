// The planner's path lookups in the catalog (FindPath), mapped onto why a node is held
// back: the catalog's error codes are constants it exports (@ferry/catalog/errors), never
// its message text. An invalid target is the caller's error (INVALID_ARGUMENT).
import type { catalog } from "@ferry/proto";
import { GrpcCallError, status, type TypedClient } from "@ferry/grpc";
import { invalidArgument, unavailable } from "@ferry/runtime";
import { BAD_TARGET_CODES, CatalogCode } from "@ferry/catalog/errors";
import { HELD, type PathLookup } from "../domain/plan.ts";

export function catalogPaths(client: TypedClient<typeof catalog.CatalogServiceService>, signal?: AbortSignal): PathLookup {
  return async (board, from, target) => {
    try {
      const r = await client.findPath({ fromVersion: from, target, board }, { signal });
      return { ok: true, target: r.targetVersion, hops: r.hops.map((h) => ({ toVersion: h.toVersion, image: h.image!, envelope: h.envelope! })) };
    } catch (err) {
      if (!(err instanceof GrpcCallError) || !err.errorCode) throw unavailable(`catalog: ${(err as Error).message}`, "CATALOG_UNAVAILABLE", err);
      if (err.errorCode === CatalogCode.DOWNGRADE) return { ok: false, code: HELD.already, reason: `already on ${from}, newer than ${target}` };
      if (err.errorCode === CatalogCode.WRONG_BOARD) return { ok: false, code: HELD.wrongBoard, reason: err.details };
      if (err.errorCode === CatalogCode.NO_PATH) return { ok: false, code: HELD.noPath, reason: err.details };
      if (BAD_TARGET_CODES.has(err.errorCode) || err.code === status.INVALID_ARGUMENT)
        throw invalidArgument(`target "${target}": ${err.details}`, err.errorCode);
      return { ok: false, code: HELD.noPath, reason: err.details };
    }
  };
}
