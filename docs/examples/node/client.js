'use strict';
/**
 * A streamflow client in Node.js, written from `schemas/*.avsc` and
 * `docs/wire.md` alone (kafkajs and avsc; none of the engine's code).
 *
 * It starts a workflow (asking for a reply), waits for the reply, sends the
 * workflow its signals, then reads the history topic until the workflow's
 * terminal event, and prints one JSON object with what it saw:
 *
 *   node client.js --broker localhost:9092 --workflow-id order-1 \
 *       --type order_workflow --input '{"order_id": "order-1"}' \
 *       --signal 'approval={"approved_by": "bob"}' --attr 'customer="acme"'
 *
 * Options: --attr NAME=JSON (a search attribute of the start, repeatable),
 * --memo JSON (its memo), --app-id (default streamflow), --generation (default 1),
 * --schemas (default: the repository's schemas/), --timeout (seconds for
 * the whole run, default 60). Exits 0 once it saw a terminal event, 1 with
 * the reason on stderr otherwise.
 *
 * Every message is the Avro single-object encoding: C3 01, the 8-byte
 * little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical
 * Form, then the Avro binary body. Commands are keyed by workflow id and
 * partitioned with murmur2, as Java's (and the engine's) default partitioner
 * does, so every command of a workflow reaches the partition that owns it.
 */

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const avro = require('avsc');
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const MAGIC = Buffer.from([0xc3, 0x01]);
const JSON_TYPE = 'application/json';
const DEFAULT_SCHEMAS = path.resolve(__dirname, '..', '..', '..', 'schemas');
const TERMINAL = new Set(['workflow_completed', 'workflow_failed', 'workflow_canceled']);

// -- CRC-64-AVRO, as the Avro specification defines it -----------------------------
const CRC64_EMPTY = 0xc15d213aa4d7a795n;
const CRC64_TABLE = Array.from({ length: 256 }, (_, i) => {
  let fp = BigInt(i);
  for (let j = 0; j < 8; j++) {
    fp = (fp >> 1n) ^ (CRC64_EMPTY & -(fp & 1n));
  }
  return fp;
});

function crc64Avro(bytes) {
  let fp = CRC64_EMPTY;
  for (const byte of bytes) {
    fp = (fp >> 8n) ^ CRC64_TABLE[Number((fp ^ BigInt(byte)) & 0xffn)];
  }
  return fp;
}

/** The 8 wire bytes of a schema's fingerprint: CRC-64-AVRO of its canonical form, LE. */
function fingerprint(type) {
  // avsc's schema() without options is the Parsing Canonical Form: full names, no
  // doc, default or logicalType attributes.
  const canonical = JSON.stringify(type.schema());
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(crc64Avro(Buffer.from(canonical, 'utf8')));
  return out;
}

// -- framing ------------------------------------------------------------------------
function loadCodec(name, directory) {
  const file = path.join(directory, `${name}.avsc`);
  const type = avro.Type.forSchema(JSON.parse(fs.readFileSync(file, 'utf8')));
  return { name, type, fingerprint: fingerprint(type) };
}

function encode(codec, record) {
  return Buffer.concat([MAGIC, codec.fingerprint, codec.type.toBuffer(record)]);
}

function decode(codec, bytes) {
  if (!bytes || bytes.length < 10 || !bytes.subarray(0, 2).equals(MAGIC)) {
    throw new Error(`not an Avro single-object ${codec.name}`);
  }
  const fp = bytes.subarray(2, 10);
  if (!fp.equals(codec.fingerprint)) {
    // a reader that keeps older schemas would look the writer's schema up here
    throw new Error(`unknown schema fingerprint ${fp.toString('hex')} for a ${codec.name}`);
  }
  return codec.type.fromBuffer(bytes.subarray(10));
}

function jsonPayload(bytes, contentType) {
  if (bytes === null) return null;
  if (contentType !== JSON_TYPE) throw new Error(`payload of content type ${contentType}`);
  return JSON.parse(bytes.toString('utf8'));
}

/** The partition kafkajs's default (Java-compatible murmur2) partitioner picks for `key`. */
function partitionFor(key, partitions) {
  const partitioner = Partitioners.DefaultPartitioner();
  const partitionMetadata = Array.from({ length: partitions }, (_, i) => ({
    partitionId: i,
    leader: 0,
  }));
  return partitioner({ topic: 't', partitionMetadata, message: { key: Buffer.from(key) } });
}

function commandRecord(kind, workflowId, name, payload, extra = {}) {
  return {
    command_id: crypto.randomUUID(), // a command seen twice is applied once
    kind,
    workflow_id: workflowId,
    issued_at: Date.now() * 1000, // timestamp-micros
    name,
    payload: payload === undefined ? null : Buffer.from(JSON.stringify(payload), 'utf8'),
    content_type: JSON_TYPE,
    sender_id: extra.senderId ?? null,
    reply_to: extra.replyTo ?? null,
    timeout_seconds: extra.timeoutSeconds ?? null,
    // start, schema version 3: JSON objects as text
    search_attributes: extra.searchAttributes ? JSON.stringify(extra.searchAttributes) : null,
    memo: extra.memo ? JSON.stringify(extra.memo) : null,
    run_id: null,
    step: null,
    attempt: null,
    duration: null,
    failure: null,
    route: null,
  };
}

/**
 * The events of a history record: a HistoryEvent, or a HistoryBatch of the events
 * one activation recorded (told apart by the schema fingerprint), each with the type
 * its record's header gives (`type`, or `types` in order).
 */
function historyEvents(codecs, message) {
  const headers = message.headers || {};
  const header = (name) => (headers[name] ? headers[name].toString() : null);
  const fp = message.value ? message.value.subarray(2, 10) : null;
  if (fp && fp.equals(codecs.history_batch.fingerprint)) {
    // each item is a HistoryEvent message of its own; `types` would let a reader skip some
    const batch = decode(codecs.history_batch, message.value);
    const types = (header('types') || '').split(',');
    return batch.events.map((bytes, i) => ({
      event: decode(codecs.history_event, bytes),
      typeHeader: types[i] ?? null,
    }));
  }
  return [{ event: decode(codecs.history_event, message.value), typeHeader: header('type') }];
}

function historyView(event, typeHeader, recordEvents, message, partition) {
  return {
    workflow_id: event.workflow_id,
    run_id: event.run_id,
    workflow_type: event.workflow_type,
    id: event.id,
    type: event.type,
    timestamp: event.timestamp,
    activity_name: event.activity_name,
    payload: jsonPayload(event.payload, event.content_type),
    error: event.error,
    signal_name: event.signal_name,
    duration: event.duration,
    step: event.step,
    attempt: event.attempt,
    sender_id: event.sender_id,
    search_attributes: event.search_attributes ? JSON.parse(event.search_attributes) : null,
    memo: event.memo ? JSON.parse(event.memo) : null,
    // the `type` (`types`) header repeats the event type (readers skip records unread by it)
    type_header: typeHeader,
    record_events: recordEvents,
    partition,
    offset: Number(message.offset),
  };
}

/** Resolves with the value `settle` is called with; rejects after `deadline`. */
function waiter(what, deadline) {
  let settle;
  let fail;
  const promise = new Promise((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  const timer = setTimeout(
    () => fail(new Error(`timed out waiting for ${what}`)),
    Math.max(0, deadline - Date.now()),
  );
  return {
    promise: promise.finally(() => clearTimeout(timer)),
    settle,
    fail,
  };
}

function withTimeout(promise, ms, what) {
  const bounded = waiter(what, Date.now() + ms);
  promise.then(bounded.settle, bounded.fail);
  return bounded.promise;
}

function stderrLogger() {
  return ({ namespace, label, log }) => {
    process.stderr.write(`kafkajs ${label} ${namespace}: ${log.message}\n`);
  };
}

// -- the run ------------------------------------------------------------------------
async function run(options) {
  const deadline = Date.now() + options.timeout * 1000;
  const codecs = {};
  for (const name of ['command', 'reply', 'history_event', 'history_batch']) {
    codecs[name] = loadCodec(name, options.schemas);
  }
  const prefix = `${options.appId}.g${options.generation}`;
  const topics = {
    commands: `${prefix}.commands`,
    history: `${options.appId}.history`,
    replies: `${options.appId}.replies`,
  };
  const clientId = `node-${crypto.randomUUID()}`;
  const kafka = new Kafka({
    clientId,
    brokers: [options.broker],
    logLevel: logLevel.WARN,
    logCreator: stderrLogger,
    retry: { retries: 8 },
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  // A fresh group that reads from the beginning sees the reply and every event, however
  // early they are published. (A long-lived client would commit and resume instead.)
  const consumer = kafka.consumer({ groupId: clientId, maxWaitTimeInMs: 100 });

  const startCommand = commandRecord('start', options.workflowId, options.type, options.input, {
    replyTo: clientId,
    searchAttributes: Object.keys(options.attributes).length ? options.attributes : null,
    memo: options.memo,
  });
  const reply = waiter('the reply to the start command', deadline);
  const ended = waiter(`the terminal event of ${options.workflowId}`, deadline);
  const history = [];
  const seen = new Set();

  async function onMessage({ topic, partition, message }) {
    if (topic === topics.replies) {
      // replies are keyed by the client id named in reply_to
      if (message.key === null || message.key.toString() !== clientId) return;
      const record = decode(codecs.reply, message.value);
      if (record.command_id === startCommand.command_id) {
        reply.settle({ ...record, payload: jsonPayload(record.payload, record.content_type) });
      }
    } else if (topic === topics.history) {
      if (message.key === null || message.key.toString() !== options.workflowId) return;
      const events = historyEvents(codecs, message);
      for (const { event, typeHeader } of events) {
        const mark = `${event.run_id}/${event.id}`;
        if (seen.has(mark)) continue; // republished after a worker crash: keep one
        seen.add(mark);
        history.push(historyView(event, typeHeader, events.length, message, partition));
        if (TERMINAL.has(event.type)) ended.settle(event);
      }
    }
  }

  const commands = [];
  async function send(record) {
    const [meta] = await producer.send({
      topic: topics.commands,
      acks: -1,
      messages: [{ key: record.workflow_id, value: encode(codecs.command, record) }],
    });
    commands.push({
      kind: record.kind,
      command_id: record.command_id,
      partition: meta.partition,
      offset: Number(meta.baseOffset),
    });
  }

  const remaining = () => Math.max(1, deadline - Date.now());
  try {
    await withTimeout(producer.connect(), remaining(), 'the producer to connect');
    await withTimeout(consumer.connect(), remaining(), 'the consumer to connect');
    await consumer.subscribe({ topics: [topics.replies, topics.history], fromBeginning: true });
    await consumer.run({
      eachMessage: async (payload) => {
        try {
          await onMessage(payload);
        } catch (error) {
          const where = `${payload.topic}/${payload.partition}@${payload.message.offset}`;
          const failure = new Error(`cannot read ${where}: ${error.message}`);
          reply.fail(failure);
          ended.fail(failure);
        }
      },
    });

    await send(startCommand);
    const started = await reply.promise;
    if (!started.ok) {
      throw new Error(`start refused: ${started.error_type}: ${started.error}`);
    }
    for (const [name, payload] of options.signals) {
      await send(
        commandRecord('signal', options.workflowId, name, payload, { senderId: 'node-client' }),
      );
    }
    const terminal = await ended.promise;
    history.sort((a, b) => a.id - b.id);
    return {
      workflow_id: options.workflowId,
      client_id: clientId,
      fingerprints: Object.fromEntries(
        Object.entries(codecs).map(([name, codec]) => [name, codec.fingerprint.toString('hex')]),
      ),
      commands,
      reply: started,
      status: terminal.type.replace('workflow_', ''),
      result: jsonPayload(terminal.payload, terminal.content_type),
      error: terminal.error,
      history,
    };
  } finally {
    // leave the group and close the connections, bounded: the result is already known
    await withTimeout(
      Promise.allSettled([consumer.disconnect(), producer.disconnect()]),
      10_000,
      'the clients to disconnect',
    ).catch((error) => process.stderr.write(`${error.message}\n`));
  }
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      broker: { type: 'string' },
      'app-id': { type: 'string', default: 'streamflow' },
      generation: { type: 'string', default: '1' },
      schemas: { type: 'string', default: DEFAULT_SCHEMAS },
      'workflow-id': { type: 'string' },
      type: { type: 'string' },
      input: { type: 'string' },
      signal: { type: 'string', multiple: true, default: [] },
      attr: { type: 'string', multiple: true, default: [] },
      memo: { type: 'string' },
      timeout: { type: 'string', default: '60' },
    },
  });
  for (const required of ['broker', 'workflow-id', 'type']) {
    if (!values[required]) throw new Error(`--${required} is required`);
  }
  const signals = values.signal.map((text) => {
    const at = text.indexOf('=');
    if (at <= 0) throw new Error(`--signal wants NAME=JSON, got ${JSON.stringify(text)}`);
    return [text.slice(0, at), JSON.parse(text.slice(at + 1))];
  });
  const attributes = {};
  for (const text of values.attr) {
    const at = text.indexOf('=');
    if (at <= 0) throw new Error(`--attr wants NAME=JSON, got ${JSON.stringify(text)}`);
    attributes[text.slice(0, at)] = JSON.parse(text.slice(at + 1));
  }
  return {
    broker: values.broker,
    appId: values['app-id'],
    generation: Number(values.generation),
    schemas: values.schemas,
    workflowId: values['workflow-id'],
    type: values.type,
    input: values.input === undefined ? undefined : JSON.parse(values.input),
    signals,
    attributes,
    memo: values.memo === undefined ? null : JSON.parse(values.memo),
    timeout: Number(values.timeout),
  };
}

async function main() {
  let options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`client.js: ${error.message}\n`);
    return 2;
  }
  try {
    const seen = await run(options);
    process.stdout.write(`${JSON.stringify(seen)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`client.js: ${error.message}\n`);
    return 1;
  }
}

module.exports = { crc64Avro, fingerprint, loadCodec, encode, decode, partitionFor };

if (require.main === module) {
  main().then((code) => process.exit(code));
}
