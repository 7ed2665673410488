// Container health checks (deploy/docker-compose.yml): `grpc <host:port>` asks
// grpc.health.v1 for the server's overall status; `http <url>` wants a 2xx. Exit 0 when
// healthy, 1 otherwise, with one line saying why.
import { health } from "@ferry/proto";
import { createClient } from "@ferry/grpc";

const [kind, target] = process.argv.slice(2);
try {
  if (kind === "grpc" && target) {
    const c = createClient(health.HealthService, target, { deadlineMs: 3000 });
    const r = await c.check({ service: "" }).finally(() => c.close());
    if (r.status !== health.HealthCheckResponse_ServingStatus.SERVING)
      throw new Error(`status ${health.healthCheckResponse_ServingStatusToJSON(r.status)}`);
  } else if (kind === "http" && target) {
    const r = await fetch(target, { signal: AbortSignal.timeout(3000) });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
  } else {
    process.stderr.write("usage: healthcheck.ts grpc <host:port> | http <url>\n");
    process.exit(2);
  }
} catch (err) {
  process.stderr.write(`unhealthy: ${(err as Error).message}\n`);
  process.exit(1);
}
