// BullMQ side of the queue benchmark: the same no-op jobs, the same Redis,
// one producer process and N worker processes, timed from the first push
// until every job is completed.
//
//   node bench.mjs --jobs 200000 --redis redis://127.0.0.1:6379 [--workers 1]
//   node bench.mjs --footprint 1000000
import { fork } from 'node:child_process';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const redisUrl = new URL(args.redis ?? 'redis://127.0.0.1:6379');
const connection = { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) };
const role = args.role ?? 'main';
const queueName = args.queue ?? `bench-${process.pid}-${Date.now()}`;
const BATCH = 1000;
const CONCURRENCY = Number(args.concurrency ?? 256);

async function produce(count) {
  const queue = new Queue(queueName, { connection });
  for (let sent = 0; sent < count; sent += BATCH) {
    const n = Math.min(BATCH, count - sent);
    await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: {} })));
  }
  await queue.close();
}

async function work(count) {
  let done = 0;
  const worker = new Worker(queueName, async () => null, { connection, concurrency: CONCURRENCY });
  await new Promise((resolve) => {
    worker.on('completed', () => {
      done += 1;
      if (done % 1000 === 0) process.send?.({ done: 1000 });
    });
    process.on('message', (m) => m === 'stop' && resolve());
  });
  await worker.close();
}

// used_memory once Redis has finished freeing deleted keys in the
// background (lazy free), so earlier runs do not shrink the figure.
async function redisMemory() {
  const client = new IORedis(connection);
  let info = await client.info('memory');
  while (!/lazyfree_pending_objects:0\b/.test(info)) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    info = await client.info('memory');
  }
  await client.quit();
  return Number(/used_memory:(\d+)/.exec(info)[1]);
}

async function main() {
  // Forked children exit explicitly: the IPC channel would keep them alive.
  if (role === 'producer') return produce(Number(args.jobs)).then(() => process.exit(0));
  if (role === 'worker') return work(Number(args.jobs)).then(() => process.exit(0));

  if (args.footprint) {
    const count = Number(args.footprint);
    const queue = new Queue(queueName, { connection });
    const before = await redisMemory();
    await produce(count);
    const after = await redisMemory();
    console.log(JSON.stringify({ peer: 'bullmq', pending_jobs: count, bytes_per_job: (after - before) / count }));
    await queue.obliterate({ force: true });
    await queue.close();
    return;
  }

  const jobs = Number(args.jobs ?? 100000);
  const workers = Number(args.workers ?? 1);
  const here = new URL(import.meta.url).pathname;
  const common = ['--queue', queueName, '--redis', redisUrl.href, '--jobs', String(jobs), '--concurrency', String(CONCURRENCY)];
  const children = [];
  let done = 0;
  let finished;
  const allDone = new Promise((resolve) => (finished = resolve));
  for (let i = 0; i < workers; i++) {
    const child = fork(here, [...common, '--role', 'worker']);
    child.on('message', (m) => {
      done += m.done;
      if (done >= jobs) finished();
    });
    children.push(child);
  }
  await new Promise((resolve) => setTimeout(resolve, 500)); // workers connect
  const started = process.hrtime.bigint();
  const producer = fork(here, [...common, '--role', 'producer']);
  const pushed = new Promise((resolve) => producer.on('exit', resolve));
  await pushed;
  const pushSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  await allDone;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  children.forEach((child) => child.send('stop'));
  await Promise.all(children.map((child) => new Promise((resolve) => child.on('exit', resolve))));
  const queue = new Queue(queueName, { connection });
  await queue.obliterate({ force: true });
  await queue.close();
  console.log(JSON.stringify({
    peer: 'bullmq',
    jobs,
    workers,
    pushed_per_s: Math.round(jobs / pushSeconds),
    end_to_end_per_s: Math.round(jobs / seconds),
  }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
