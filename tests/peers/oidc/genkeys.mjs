#!/usr/bin/env node
// Generate a private JWKS for server.mjs (node:crypto only; no dependencies).
//
//   node genkeys.mjs --out FILE [--alg RS256|ES256|PS256] [--append FILE] [--public FILE]
//
// Writes {"keys":[<new private JWK>, ...]} to FILE with a random kid, "alg" and "use":"sig".
// With --append OLD, the new key comes first and OLD's keys follow (rotation: the first key
// signs, the later ones stay published); OLD may be the same file as --out.
// --public FILE also writes the public JWKS. Prints the new kid on stdout.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';

function usage(msg) {
  if (msg) console.error(`genkeys.mjs: ${msg}`);
  console.error('usage: node genkeys.mjs --out FILE [--alg RS256|ES256|PS256] [--append FILE] [--public FILE]');
  process.exit(2);
}

const args = { alg: 'RS256' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 1) {
  const a = argv[i];
  if (!a.startsWith('--')) usage(`unexpected argument ${a}`);
  const name = a.slice(2);
  if (!['out', 'alg', 'append', 'public'].includes(name)) usage(`unknown option ${a}`);
  const value = argv[i + 1];
  if (value === undefined) usage(`${a} needs a value`);
  args[name] = value;
  i += 1;
}
if (!args.out) usage('--out is required');

let pair;
switch (args.alg) {
  case 'RS256':
  case 'PS256':
    pair = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
    break;
  case 'ES256':
    pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    break;
  default:
    usage(`unsupported --alg ${args.alg}`);
}

const kid = randomBytes(12).toString('base64url');
const jwk = { ...pair.privateKey.export({ format: 'jwk' }), kid, alg: args.alg, use: 'sig' };

let keys = [jwk];
if (args.append) {
  let old;
  try {
    old = JSON.parse(readFileSync(args.append, 'utf8'));
  } catch (e) {
    usage(`cannot read --append ${args.append}: ${e.message}`);
  }
  if (!old || !Array.isArray(old.keys)) usage(`${args.append} is not a JWKS`);
  keys = [jwk, ...old.keys];
}

function writeAtomic(path, obj) {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(obj, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, path);
}

writeAtomic(args.out, { keys });
if (args.public) {
  const strip = ({
    d, p, q, dp, dq, qi, oth, ...pub
  }) => pub;
  writeAtomic(args.public, { keys: keys.map(strip) });
}
console.log(kid);
