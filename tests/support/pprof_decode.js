// Decodes a gzipped pprof profile with the npm package `pprof-format` (a third-party reader,
// as profiling tools use) and prints what the tests check, as JSON on stdout.
//
//   node pprof_decode.js <profile.pb.gz>
'use strict';
const fs = require('fs');
const zlib = require('zlib');
const { Profile } = require('pprof-format');

const profile = Profile.decode(zlib.gunzipSync(fs.readFileSync(process.argv[2])));
const strings = profile.stringTable.strings;
const text = (index) => strings[Number(index)];
const functions = new Map(profile.function.map((f) => [Number(f.id), f]));
const locations = new Map(profile.location.map((l) => [Number(l.id), l]));
const frame = (line) => {
  const f = functions.get(Number(line.functionId));
  return { function: text(f.name), file: text(f.filename), line: Number(line.line) };
};
const out = {
  sampleTypes: profile.sampleType.map((t) => [text(t.type), text(t.unit)]),
  defaultSampleType: text(profile.defaultSampleType),
  periodType: profile.periodType ? [text(profile.periodType.type), text(profile.periodType.unit)] : null,
  period: Number(profile.period),
  comments: profile.comment.map(text),
  mappings: profile.mapping.length,
  strings,
  samples: profile.sample.map((s) => ({
    values: s.value.map(Number),
    labels: Object.fromEntries(s.label.map((l) => [text(l.key), text(l.str)])),
    // Leaf first; each location's lines innermost first.
    stack: s.locationId.flatMap((id) => locations.get(Number(id)).line.map(frame)),
  })),
};
process.stdout.write(JSON.stringify(out));
