// Check a Sigstore bundle signed with a plain public key (cosign --key style), fully offline,
// with the npm package @sigstore/verify.
//
//   node verify-bundle.mjs BUNDLE.json BLOB PUBKEY.pem [DIR_HOLDING_node_modules]
//
// Exit 0 and "OK: BLOB" when the bundle verifies; exit 1 and "FAIL: BLOB: reason" otherwise;
// exit 2 on bad usage. No transparency log, CT log or timestamp is required: the trust comes
// from the pinned public key, whose hint must match the bundle's.
import { createHash, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const [bundlePath, blobPath, keyPath, modulesDir] = process.argv.slice(2);
if (!bundlePath || !blobPath || !keyPath) {
  console.error('usage: node verify-bundle.mjs BUNDLE.json BLOB PUBKEY.pem [MODULES_DIR]');
  process.exit(2);
}

// Resolve the packages from MODULES_DIR (e.g. a cache folder outside the repository).
const root = resolve(modulesDir ?? dirname(fileURLToPath(import.meta.url)));
const requireFrom = createRequire(join(root, 'package.json'));
const { bundleFromJSON } = requireFrom('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = requireFrom('@sigstore/verify');

const EMPTY_TRUSTED_ROOT = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};

function keyFinderFor(pemPath) {
  const publicKey = createPublicKey(readFileSync(pemPath));
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const expectedHint = createHash('sha256').update(spki).digest('base64');
  return (hint) => {
    if (hint !== expectedHint) {
      throw new Error(`bundle names key ${JSON.stringify(hint)}, trusted key is ${expectedHint}`);
    }
    return { publicKey, validFor: () => true };
  };
}

try {
  const bundle = bundleFromJSON(JSON.parse(readFileSync(bundlePath, 'utf8')));
  const trust = toTrustMaterial(EMPTY_TRUSTED_ROOT, keyFinderFor(keyPath));
  const verifier = new Verifier(trust, {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: 0,
  });
  verifier.verify(toSignedEntity(bundle, readFileSync(blobPath)));
  console.log(`OK: ${blobPath}`);
} catch (err) {
  console.error(`FAIL: ${blobPath}: ${err.code ?? err.name}: ${err.message}`);
  process.exit(1);
}
