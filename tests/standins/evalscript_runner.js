// Runs a Sentinel Hub V3 evalscript over per-pixel samples, for the Sentinel Hub stand-in (tests only).
//
// stdin:  uint32 LE header length, JSON header {evalscript, npix, sources: {id: {bands: [...], reflectance: [...],
//         observations: n, scenes: {from, to, orbits: [{dateFrom, dateTo, tiles?}] (one per observation)}}},
//         fusion}, then float64 LE arrays (npix each) for every observation of every source, band by band in header
//         order. Observations come in the request's mosaicking order.
// Mosaicking SIMPLE (default): one sample per source and pixel — the first observation with dataMask 1 (else the
// first). ORBIT/TILE: every observation is a sample (dataMask 0 where it has no data), in date order, newest first;
// an evalscript's preProcessScenes(collections) sees the orbits in that order and may sort or filter them — the
// samples follow the orbits it returns. `collections` has the shapes of Sentinel Hub's Evalscript V3 page
// ("preProcessScenes"): one source {from, to, scenes: {orbits}}; data fusion {<datasource id>: {from, to, scenes:
// {orbits}}}; from/to are Dates, dateFrom/dateTo ISO strings.
// stdout: uint32 LE header length, JSON {setup: {input, output, mosaicking}, outputs: [{id, bands, sampleType}],
//         samples: {id: n}, scenes: {id: {given: [dateFrom], used: [dateFrom]}}} or {error},
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
  const scenes = multi ? arrangeScenes(context, header, data, fusion) : {};
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
  const counts = {};
  for (const id of Object.keys(data)) {
    counts[id] = data[id].length;
  }
  const usedSetup = {input: inputs, output: described, mosaicking: setup.mosaicking || "SIMPLE"};
  reply({setup: usedSetup, outputs: described, samples: counts, scenes: scenes}, result);
}

// ORBIT/TILE: order every source's observations by date (newest first), let preProcessScenes sort or filter the
// orbits, and reorder `data` to match. Returns {id: {given, used}} (the orbits' dateFrom before and after).
function arrangeScenes(context, header, data, fusion) {
  const ids = Object.keys(header.sources);
  const collections = {};
  const given = {};
  for (const id of ids) {
    const meta = header.sources[id].scenes || {orbits: []};
    const orbits = (meta.orbits || []).map(function (orbit, i) {
      return Object.assign({}, orbit, {__idx: i});  // "__" fields are the service's own (the docs forbid touching them)
    });
    orbits.sort(function (a, b) { return Date.parse(b.dateFrom) - Date.parse(a.dateFrom); });
    given[id] = orbits.map(function (o) { return o.dateFrom; });
    collections[id] = {
      from: meta.from ? new Date(meta.from) : undefined,
      to: meta.to ? new Date(meta.to) : undefined,
      scenes: {orbits: orbits}
    };
  }
  let arranged = fusion ? collections : collections[ids[0]];
  if (typeof context.preProcessScenes === "function") {
    arranged = context.preProcessScenes(arranged);
    if (!arranged || typeof arranged !== "object") {
      throw new Error("preProcessScenes must return the collections object");
    }
  }
  const out = {};
  for (const id of ids) {
    const one = fusion ? arranged[id] : arranged;
    const orbits = one && one.scenes && one.scenes.orbits;
    if (!Array.isArray(orbits)) {
      throw new Error("preProcessScenes returned no scenes.orbits" + (fusion ? " for datasource '" + id + "'" : ""));
    }
    const list = data[id];
    data[id] = orbits.map(function (orbit) {
      if (!(orbit.__idx in list)) {
        throw new Error("preProcessScenes returned an orbit the service did not offer");
      }
      return list[orbit.__idx];
    });
    out[id] = {given: given[id], used: orbits.map(function (o) { return o.dateFrom; })};
  }
  return out;
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
