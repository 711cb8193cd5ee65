// Runs a TF.js graph model from disk in Node with the pure-JavaScript
// @tensorflow/tfjs (CPU backend), as a browser would, and writes its outputs
// for vispipe's export verification.
//
// Usage: node run_graph_model.js MODEL_DIR IMAGES.bin N,H,W,C OUT.bin [LATENCY_IMAGES]
//   IMAGES.bin: uint8 pixels [N, H, W, C]; OUT.bin: float32 probabilities [N, classes],
//   OUT.bin.label_ids: int32 [N, k], OUT.bin.scores: float32 [N, k].
// Prints one JSON line: {"backend", "classes", "top_k", "latency_ms", "metadata"}.
//
// Tensors are found by the names vispipe records in model.json
// (userDefinedMetadata.vispipe.input_names / output_names), never by the
// converter's signature keys, which it drops when two outputs share a shape.
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

// The recorded tensor names: {input, outputs: [probabilities, label_ids, scores]}.
function contractNames(modelJson, modelDir) {
  const meta = (modelJson.userDefinedMetadata || {}).vispipe || {};
  const inputs = meta.input_names || {};
  const outputs = meta.output_names || {};
  const wanted = ["probabilities", "label_ids", "scores"];
  if (!inputs.images || wanted.some((key) => !outputs[key])) {
    throw new Error(`${modelDir}/model.json: userDefinedMetadata.vispipe needs input_names.images ` +
      `and output_names.{${wanted.join(",")}}, got ${JSON.stringify({ inputs, outputs })}`);
  }
  return { input: inputs.images, outputs: wanted.map((key) => outputs[key]) };
}

async function main() {
  const [modelDir, imagesPath, shapeText, outPath, latencyText] = process.argv.slice(2);
  if (!outPath) {
    throw new Error("usage: run_graph_model.js MODEL_DIR IMAGES.bin N,H,W,C OUT.bin [LATENCY_IMAGES]");
  }
  await tf.setBackend("cpu");
  const shape = shapeText.split(",").map(Number);
  const { modelJson, artifacts } = loadArtifacts(modelDir);
  const names = contractNames(modelJson, modelDir);
  const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  const pixels = new Uint8Array(fs.readFileSync(imagesPath));
  const [count, height, width, channels] = shape;
  const perImage = height * width * channels;
  const chunks = [[], [], []];
  let classes = 0;
  let topK = 0;
  for (let start = 0; start < count; start += BATCH) {
    const end = Math.min(count, start + BATCH);
    const outputs = tf.tidy(() => {
      const x = tf.tensor4d(pixels.subarray(start * perImage, end * perImage),
                            [end - start, height, width, channels], "int32");
      return model.execute({ [names.input]: x }, names.outputs);
    });
    classes = outputs[0].shape[1];
    topK = outputs[1].shape[1];
    for (let i = 0; i < outputs.length; i++) {
      const data = await outputs[i].data();
      chunks[i].push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    }
    tf.dispose(outputs);
  }
  fs.writeFileSync(outPath, Buffer.concat(chunks[0]));
  fs.writeFileSync(`${outPath}.label_ids`, Buffer.concat(chunks[1]));
  fs.writeFileSync(`${outPath}.scores`, Buffer.concat(chunks[2]));

  const latencyImages = Math.min(count, Number(latencyText || 20));
  const times = [];
  for (let i = 0; i < latencyImages; i++) {
    const x = tf.tensor4d(pixels.subarray(i * perImage, (i + 1) * perImage),
                          [1, height, width, channels], "int32");
    const t0 = process.hrtime.bigint();
    const y = model.execute({ [names.input]: x }, names.outputs[0]);
    await y.data();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    x.dispose();
    y.dispose();
  }
  times.sort((a, b) => a - b);
  const latency = times.length ? times[Math.floor(times.length / 2)] : null;
  console.log(JSON.stringify({
    backend: tf.getBackend(), classes, top_k: topK, latency_ms: latency,
    metadata: modelJson.userDefinedMetadata || null,
  }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
