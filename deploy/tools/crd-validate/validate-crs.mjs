// Validate custom resources against their CRD schemas.
//
// Reads a JSON array of Kubernetes objects on stdin (one built overlay), validates each custom
// resource this file has a model for, and prints one line per resource. Exit 1 on any invalid
// resource, 2 on bad input. Built-in kinds are not ours to check (kubernetes-validate does).
//
// The models come from kubernetes-models (npm), which compiles each CRD's OpenAPI schema into a
// validator: types, required fields, enums, formats. Like the API server's structural schema it
// does not reject unknown fields (the API server prunes them), so a misspelt optional field passes.
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

export const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

if (process.argv.includes("--list")) {
  console.log(Object.keys(MODELS).join("\n"));
  process.exit(0);
}

let docs;
try {
  docs = JSON.parse(readFileSync(0, "utf8"));
  if (!Array.isArray(docs)) throw new Error("expected a JSON array of objects");
} catch (error) {
  console.error(`ERROR reading stdin: ${error.message}`);
  process.exit(2);
}

let failed = 0;
let checked = 0;
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const Model = MODELS[key];
  if (!Model) continue;
  const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
  checked += 1;
  try {
    new Model(doc).validate();
    console.log(`INFO ${name} (${doc.apiVersion}) matches its CRD schema`);
  } catch (error) {
    failed += 1;
    console.log(`ERROR ${name} (${doc.apiVersion}): ${error.message}`);
  }
}
console.log(`${checked - failed} of ${checked} custom resources valid`);
process.exit(failed ? 1 : 0);
