// Everything the planner does with Kubernetes, loaded by app.ts only when a cluster is
// configured (the client library alone is ~90 MB of RSS).
export { KubeGates, loadKubeConfig } from "./kube-gates.ts";
export { OSUpgradeController } from "./osupgrade.ts";
