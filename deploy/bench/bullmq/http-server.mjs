// The peer of the HTTP push benchmark (deploy/scripts/bench-http.sh): the
// smallest HTTP front door to BullMQ a user would write. POST /job adds one
// job with Queue.add, POST /bulk adds a JSON array with Queue.addBulk; both
// answer 202 with the ids. Node's cluster module runs one process per core
// (as our API runs one thread per core), all sharing the port.
//
//   node http-server.mjs --port 8091 --redis redis://127.0.0.1:6379 --queue bench [--processes 2]
import cluster from 'node:cluster';
import http from 'node:http';
import { availableParallelism } from 'node:os';
import { Queue } from 'bullmq';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const processes = Number(args.processes ?? availableParallelism());

if (cluster.isPrimary) {
  for (let i = 0; i < processes; i += 1) cluster.fork();
  process.on('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers)) worker.kill('SIGTERM');
    process.exit(0);
  });
} else {
  const redisUrl = new URL(args.redis ?? 'redis://127.0.0.1:6379');
  const connection = { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) };
  const queue = new Queue(args.queue ?? 'bench', { connection });
  const reply = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  http
    .createServer((req, res) => {
      const chunks = [];
      req.on('data', (chunk) => chunks.push(chunk));
      req.on('end', async () => {
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString());
          if (req.url === '/job') {
            const job = await queue.add('job', body.payload ?? {});
            reply(res, 202, { id: job.id });
          } else if (req.url === '/bulk') {
            const jobs = await queue.addBulk(body.jobs.map((j) => ({ name: 'job', data: j.payload ?? {} })));
            reply(res, 202, { ids: jobs.map((j) => j.id) });
          } else {
            reply(res, 404, { error: 'not found' });
          }
        } catch (err) {
          reply(res, 500, { error: String(err) });
        }
      });
    })
    .listen(Number(args.port ?? 8091), '127.0.0.1');
  process.on('SIGTERM', async () => {
    await queue.close();
    process.exit(0);
  });
}
