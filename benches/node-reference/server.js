'use strict';
// The reference Node.js design of SPEC section 12, for `palisade-bench node-reference`:
// node:https with the bench certificate (TLS terminated in the process), a `ws`
// WebSocketServer on the upgrade event, the Origin checked against one allowed value and
// the `Authorization: Bearer` JWT verified with `jsonwebtoken` (ES256, the bench public
// key), then an echo of text and binary messages. One process, Node's defaults otherwise.
//
//   node server.js --port 9443 --cert wss.pem --key wss-key.pem \
//     --jwt-key bench-jwt.pub.pem --origin https://app.bench.example --path /echo

const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const { WebSocketServer } = require('ws');
const jwt = require('jsonwebtoken');

function args(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['port', 'cert', 'key', 'jwt-key', 'origin', 'path']) {
    if (!(k in out)) throw new Error(`--${k} is required`);
  }
  return out;
}

const a = args(process.argv.slice(2));
// Parsed once: handing jsonwebtoken the PEM text instead re-parses it on every verify
// (about 300 us of CPU per verification here instead of about 75 us).
const publicKey = crypto.createPublicKey(fs.readFileSync(a['jwt-key']));
const verifyOptions = { algorithms: ['ES256'] };

const server = https.createServer({ cert: fs.readFileSync(a.cert), key: fs.readFileSync(a.key), ALPNProtocols: ['http/1.1'] }, (req, res) => {
  res.writeHead(426, { 'content-type': 'text/plain' });
  res.end('upgrade required\n');
});
server.on('clientError', (_err, socket) => socket.destroy());

// The same limit as the bench policy's messages.max_bytes.
const wss = new WebSocketServer({ noServer: true, maxPayload: 65536 });

function refuse(socket, status, reason) {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  const url = req.url.split('?')[0];
  if (url !== a.path) return refuse(socket, 404, 'Not Found');
  if (req.headers.origin !== a.origin) return refuse(socket, 403, 'Forbidden');
  const auth = req.headers.authorization || '';
  if (!auth.startsWith('Bearer ')) return refuse(socket, 401, 'Unauthorized');
  let claims;
  try {
    claims = jwt.verify(auth.slice(7), publicKey, verifyOptions);
  } catch (_e) {
    return refuse(socket, 401, 'Unauthorized');
  }
  if (typeof claims.sub !== 'string') return refuse(socket, 401, 'Unauthorized');
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.subject = claims.sub;
    ws.on('error', () => ws.terminate());
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});

server.listen(Number(a.port), '127.0.0.1', () => {
  console.log(`node_reference_listening port=${a.port} node=${process.version} ws=${require('ws/package.json').version} jsonwebtoken=${require('jsonwebtoken/package.json').version}`);
});
