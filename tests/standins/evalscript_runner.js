// Runs a Sentinel Hub V3 evalscript over per-pixel samples, for the Sentinel Hub stand-in (tests only).
//
// stdin:  uint32 LE header length, JSON header {evalscript, npix, sources: {id: {bands: [...], reflectance: [...],
//         observations: n}}, fusion}, then float64 LE arrays (npix each) for every observation of every source, band
//         by band in header order. Observations come in the request's mosaicking order.
// Mosaicking SIMPLE (default): one sample per source and pixel — the first observation with dataMask 1 (else the
// first). ORBIT/TILE: every observation is a sample (dataMask 0 where it has no data), as Sentinel Hub gives them.
// stdout: uint32 LE header length, JSON {setup: {input, output, mosaicking}, outputs: [{id, bands, sampleType}]} or {error},
//         then float64 LE arrays (bands x npix) per output in header order.
"use strict";
const vm = require("vm");

function reply(header, arrays) {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length, 0);
  const parts = [len, json];
  for (const a of arrays || []) {
    parts.push(Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  }
  process.stdout.write(Buffer.concat(parts));
}

function run(buf) {
  const hlen = buf.readUInt32LE(0);
  const header = JSON.parse(buf.subarray(4, 4 + hlen).toString("utf8"));
  const npix = header.npix;
  let offset = 4 + hlen;
  const data = {};  // id -> list of observations, each {band: Float64Array}
  for (const id of Object.keys(header.sources)) {
    data[id] = [];
    const count = header.sources[id].observations || 1;
    for (let o = 0; o < count; o++) {
      const obs = {};
      for (const band of header.sources[id].bands) {
        const bytes = buf.subarray(offset, offset + npix * 8);
        obs[band] = new Float64Array(Uint8Array.from(bytes).buffer);
        offset += npix * 8;
      }
      data[id].push(obs);
    }
  }
  const context = {
    SampleType: {AUTO: "AUTO", UINT8: "UINT8", UINT16: "UINT16", FLOAT32: "FLOAT32"},
    Mosaicking: {SIMPLE: "SIMPLE", ORBIT: "ORBIT", TILE: "TILE"},
    console: console,
  };
  vm.createContext(context);
  vm.runInContext(header.evalscript, context, {timeout: 5000});
  if (typeof context.setup !== "function" || typeof context.evaluatePixel !== "function") {
    throw new Error("evalscript must define setup() and evaluatePixel()");
  }
  const setup = context.setup();
  const inputs = (Array.isArray(setup.input) ? setup.input : [setup.input]).map(function (i) {
    return typeof i === "string" ? {bands: [i]} : i;
  });
  const outputs = Array.isArray(setup.output) ? setup.output : [setup.output];
  const fusion = header.fusion;
  const plan = [];
  for (const input of inputs) {
    const id = fusion ? input.datasource : Object.keys(header.sources)[0];
    if (!(id in header.sources)) {
      throw new Error("datasource '" + id + "' is not among the request's input data");
    }
    const reflectance = new Set(header.sources[id].reflectance || []);
    for (const band of input.bands) {
      if (!(band in data[id][0])) {
        throw new Error("band '" + band + "' is not available in datasource '" + id + "'");
      }
      const scale = reflectance.has(band) && input.units !== "DN" ? 1e-4 : 1;
      plan.push([id, band, scale]);
    }
  }
  const multi = setup.mosaicking === "ORBIT" || setup.mosaicking === "TILE";
  const result = outputs.map(function (o) { return new Float64Array(o.bands * npix); });
  const sampleOf = function (id, obs, p) {
    const sample = {};
    for (const [sid, band, scale] of plan) {
      if (sid === id) {
        sample[band] = obs[band][p] * scale;
      }
    }
    return sample;
  };
  const ids = Array.from(new Set(plan.map(function (x) { return x[0]; })));
  for (let p = 0; p < npix; p++) {
    const perSource = {};
    for (const id of ids) {
      const list = data[id];
      if (multi) {
        perSource[id] = list.map(function (obs) { return sampleOf(id, obs, p); });
      } else {
        const hit = list.find(function (obs) { return !("dataMask" in obs) || obs.dataMask[p] > 0; }) || list[0];
        perSource[id] = [sampleOf(id, hit, p)];
      }
    }
    let samples;
    if (fusion) {
      samples = perSource;
    } else {
      const only = perSource[ids[0]];
      samples = multi ? only : only[0];
    }
    let value = context.evaluatePixel(samples);
    if (Array.isArray(value)) {
      if (outputs.length !== 1) {
        throw new Error("evaluatePixel returned an array but setup() declares " + outputs.length + " outputs");
      }
      const single = {};
      single[outputs[0].id || "default"] = value;
      value = single;
    }
    for (let o = 0; o < outputs.length; o++) {
      const id = outputs[o].id || "default";
      const values = value[id];
      if (!Array.isArray(values) || values.length !== outputs[o].bands) {
        throw new Error("output '" + id + "' expects " + outputs[o].bands + " values, evaluatePixel returned " +
          (Array.isArray(values) ? values.length : typeof values));
      }
      for (let b = 0; b < values.length; b++) {
        result[o][b * npix + p] = values[b];
      }
    }
  }
  const described = outputs.map(function (o) {
    return {id: o.id || "default", bands: o.bands, sampleType: o.sampleType || "AUTO"};
  });
  reply({setup: {input: inputs, output: described, mosaicking: setup.mosaicking || "SIMPLE"}, outputs: described}, result);
}

const chunks = [];
process.stdin.on("data", function (c) { chunks.push(c); });
process.stdin.on("end", function () {
  try {
    run(Buffer.concat(chunks));
  } catch (err) {
    reply({error: String(err && err.message ? err.message : err)});
  }
});
