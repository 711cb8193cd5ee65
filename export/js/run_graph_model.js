// Runs a TF.js graph model from disk in Node with the pure-JavaScript
// @tensorflow/tfjs (CPU backend), as a browser would, and writes the
// probabilities for vispipe's export verification.
//
// Usage: node run_graph_model.js MODEL_DIR IMAGES.bin N,H,W,C OUT.bin [LATENCY_IMAGES]
//   IMAGES.bin: uint8 pixels [N, H, W, C]; OUT.bin: float32 probabilities [N, classes].
// Prints one JSON line: {"backend", "classes", "latency_ms", "metadata"}.
"use strict";

const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs");

const BATCH = 256;

function loadArtifacts(modelDir) {
  const modelJson = JSON.parse(fs.readFileSync(path.join(modelDir, "model.json"), "utf8"));
  const weightSpecs = [];
  const buffers = [];
  for (const group of modelJson.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const file of group.paths) {
      buffers.push(fs.readFileSync(path.join(modelDir, file)));
    }
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {
    modelJson,
    artifacts: {
      modelTopology: modelJson.modelTopology,
      format: modelJson.format,
      generatedBy: modelJson.generatedBy,
      convertedBy: modelJson.convertedBy,
      signature: modelJson.signature,
      userDefinedMetadata: modelJson.userDefinedMetadata,
      weightSpecs,
      weightData,
    },
  };
}

function nodeName(tensorName) {
  return tensorName.split(":")[0];
}

async function main() {
  const [modelDir, imagesPath, shapeText, outPath, latencyText] = process.argv.slice(2);
  if (!outPath) {
    throw new Error("usage: run_graph_model.js MODEL_DIR IMAGES.bin N,H,W,C OUT.bin [LATENCY_IMAGES]");
  }
  await tf.setBackend("cpu");
  const shape = shapeText.split(",").map(Number);
  const { modelJson, artifacts } = loadArtifacts(modelDir);
  const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  const signature = modelJson.signature;
  const inputName = nodeName(signature.inputs.images.name);
  const outputName = nodeName(signature.outputs.probabilities.name);
  const pixels = new Uint8Array(fs.readFileSync(imagesPath));
  const [count, height, width, channels] = shape;
  const perImage = height * width * channels;
  const chunks = [];
  let classes = 0;
  for (let start = 0; start < count; start += BATCH) {
    const end = Math.min(count, start + BATCH);
    const probs = tf.tidy(() => {
      const x = tf.tensor4d(pixels.subarray(start * perImage, end * perImage),
                            [end - start, height, width, channels], "int32");
      return model.execute({ [inputName]: x }, outputName);
    });
    classes = probs.shape[1];
    chunks.push(Buffer.from((await probs.data()).buffer));
    probs.dispose();
  }
  fs.writeFileSync(outPath, Buffer.concat(chunks));

  const latencyImages = Math.min(count, Number(latencyText || 20));
  const times = [];
  for (let i = 0; i < latencyImages; i++) {
    const x = tf.tensor4d(pixels.subarray(i * perImage, (i + 1) * perImage),
                          [1, height, width, channels], "int32");
    const t0 = process.hrtime.bigint();
    const y = model.execute({ [inputName]: x }, outputName);
    await y.data();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    x.dispose();
    y.dispose();
  }
  times.sort((a, b) => a - b);
  const latency = times.length ? times[Math.floor(times.length / 2)] : null;
  console.log(JSON.stringify({
    backend: tf.getBackend(), classes, latency_ms: latency,
    metadata: modelJson.userDefinedMetadata || null,
  }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
