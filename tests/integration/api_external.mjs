// The official `openai` npm client, unmodified, against a real larderd whose model is an
// external OpenAI-compatible server (examples/external/openai_server.py, started by
// larderd on first use, proxied by name, stopped by its ttl), with a llama fallback.
//   node api_external.mjs LARDERD MODELS_DIR NODE_MODULES EXAMPLES_DIR
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { runWith, until } from './larderd.mjs';

const [larderd, models, nodeModules, examples] = process.argv.slice(2);
const require = createRequire(join(nodeModules, 'noop.js'));
const PYTHON = '/usr/bin/python3';

if (!existsSync(PYTHON)) {
    console.log(`SKIP: ${PYTHON} is absent (Debian's python3 runs the example server)`);
    process.exit(77);
}

const server = join(examples, 'external', 'openai_server.py');
const dir = mkdtempSync(join(tmpdir(), 'larder-api-ext-'));
const config = `[server]
listen = 127.0.0.1:0

[model.ext-chat]
command = ${PYTHON} ${server} --port \${PORT} --model \${MODEL}
api = openai
ttl = 3s

; a server that never starts: its fallback, an in-process llama model, serves
[model.ext-broken]
command = ${PYTHON} -c "import sys; sys.exit(3)"
api = openai
fallback = gen

; an external server that declares no api: the OpenAI routes refuse it
[model.ext-plain]
command = ${PYTHON} ${server} --port \${PORT}

[model.gen]
backend = llama
path = ${models}/tiny-generator-f32.gguf
ctx = 512
threads = 1
max_tokens = 8
`;

let base = null;
let model = null;

// The child itself, through larderd's proxy route (it starts the child when needed).
async function child(path, method = 'GET') {
    const r = await fetch(`${base}/v1/models/ext-chat/proxy${path}`, { method });
    assert.equal(r.status, 200, `${path}: ${r.status}`);
    return r.json();
}

function alive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    } catch (e) {
        return e.code !== 'ESRCH';
    }
}

// The server's embedding of a text: 8 floats from its SHA-256.
function expectedEmbedding(text) {
    const d = createHash('sha256').update(text).digest();
    return Array.from(d.subarray(0, 8), (b) => (b - 127.5) / 127.5);
}

const user = (content) => [{ role: 'user', content }];

async function tests() {
    const { default: OpenAI } = require('openai');
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });

    // Listed by the model lists clients read, before anything started (not the server
    // that declares no api).
    const ids = (await client.models.list()).data.map((m) => m.id).sort();
    assert.deepEqual(ids, ['ext-broken', 'ext-chat', 'gen']);
    const router = await (await fetch(`${base}/models`)).json();
    assert.ok(router.data.some((m) => m.id === 'ext-chat' && m.status.value === 'unloaded'));
    assert.equal((await model('ext-chat')).state, 'unloaded');

    // Started on first use; the body went through unchanged, the reply came back whole.
    const first = await client.chat.completions.create({
        model: 'ext-chat', messages: user('hello world'), max_tokens: 50 }).withResponse();
    assert.equal(first.data.object, 'chat.completion');
    assert.equal(first.data.choices[0].message.content, 'you said: hello world');
    assert.equal(first.data.choices[0].finish_reason, 'stop');
    assert.equal(first.response.headers.get('x-larder-served-by'), 'ext-chat');
    assert.equal(first.response.headers.get('x-larder-cold-start'), 'true');
    assert.ok(Number(first.response.headers.get('x-larder-load-ms')) > 0);
    assert.ok(first.response.headers.get('x-larder-queue-ms') !== null);
    assert.equal((await model('ext-chat')).state, 'ready');
    const warm = await client.chat.completions.create({
        model: 'ext-chat', messages: user('a b c d'), max_tokens: 3 }).withResponse();
    assert.equal(warm.data.choices[0].message.content, 'you said: a');
    assert.equal(warm.data.choices[0].finish_reason, 'length');
    assert.equal(warm.response.headers.get('x-larder-cold-start'), 'false');

    // A stream's chunks arrive as the server sends them: the first one is read while the
    // server still holds the rest back (it waits for /release).
    const stream = await client.chat.completions.create({
        model: 'ext-chat', messages: user('hold:s1 go on'), stream: true,
        stream_options: { include_usage: true } });
    const it = stream[Symbol.asyncIterator]();
    const one = await it.next();
    assert.equal(one.value.object, 'chat.completion.chunk');
    assert.equal(one.value.choices[0].delta.content, 'you');
    await until('the server to hold s1', async () => (await child('/held?id=s1')).held);
    await child('/release?id=s1', 'POST');
    let text = one.value.choices[0].delta.content, finish = null, usage = null;
    for (let c = await it.next(); !c.done; c = await it.next()) {
        if (c.value.usage)
            usage = c.value.usage;
        for (const ch of c.value.choices) {
            text += ch.delta.content ?? '';
            finish = ch.finish_reason ?? finish;
        }
    }
    assert.equal(text, 'you said: hold:s1 go on');
    assert.equal(finish, 'stop');
    assert.equal(usage.completion_tokens, 5);

    // A client that goes away mid-stream gives its lease back.
    const ac = new AbortController();
    const cut = await client.chat.completions.create({
        model: 'ext-chat', messages: user('hold:a1 x'), stream: true }, { signal: ac.signal });
    const cutIt = cut[Symbol.asyncIterator]();
    assert.equal((await cutIt.next()).value.choices[0].delta.content, 'you');
    assert.equal((await model('ext-chat')).leases, 1);
    ac.abort();
    await until('the aborted stream\'s lease back', async () =>
        (await model('ext-chat')).leases === 0);
    await child('/release?id=a1', 'POST');

    // Embeddings: the client's default (base64) and floats, both the server's numbers.
    const emb = await client.embeddings.create({ model: 'ext-chat', input: ['alpha', 'beta'] });
    assert.equal(emb.data.length, 2);
    const floats = await client.embeddings.create({ model: 'ext-chat', input: 'alpha',
                                                    encoding_format: 'float' });
    const want = expectedEmbedding('alpha');
    for (const got of [emb.data[0].embedding, floats.data[0].embedding]) {
        assert.equal(got.length, want.length);
        for (let i = 0; i < want.length; i++)
            assert.ok(Math.abs(got[i] - want[i]) < 1e-6, `${got[i]} vs ${want[i]}`);
    }

    const done = await client.completions.create({ model: 'ext-chat', prompt: 'once upon',
                                                   max_tokens: 3 });
    assert.equal(done.object, 'text_completion');
    assert.equal(done.choices[0].text, 'you said: once');

    // The server's own refusal comes back as it answered it.
    await assert.rejects(client.chat.completions.create({ model: 'ext-chat', messages: [] }),
                         (e) => e.status === 400 && /non-empty/.test(e.message));
    // A server that declares no api is not reached through these routes.
    await assert.rejects(client.chat.completions.create({ model: 'ext-plain',
                                                          messages: user('x') }),
                         (e) => e.status === 400 && e.code === 'model_not_supported');
    assert.equal((await model('ext-plain')).state, 'unloaded');

    // A server that does not start: its in-process fallback serves, through the
    // translation of the same request.
    const fb = await client.chat.completions.create({
        model: 'ext-broken', messages: user('hello'), max_tokens: 3, temperature: 0 })
        .withResponse();
    assert.equal(fb.response.headers.get('x-larder-served-by'), 'gen');
    assert.equal(fb.data.object, 'chat.completion');
    assert.equal(fb.data.usage.completion_tokens, 3);
    assert.equal((await model('ext-broken')).state, 'failed');

    // A crash of the server: the request in flight gets an OpenAI-shaped 502, the model
    // fails, and after its cooldown a request starts a new server.
    const pid = (await child('/pid')).pid;
    const inFlight = client.chat.completions.create({ model: 'ext-chat',
                                                      messages: user('hold:c1 x') });
    const settled = inFlight.then(() => null, (e) => e);
    await until('the server to hold c1', async () => (await child('/held?id=c1')).held);
    process.kill(pid, 'SIGKILL');
    const err = await settled;
    assert.ok(err, 'the request on the crashed server succeeded');
    assert.equal(err.status, 502);
    assert.ok(['model_crashed', 'upstream_error'].includes(err.code), `code ${err.code}`);
    assert.equal(typeof err.error.message, 'string');
    assert.equal(typeof err.error.type, 'string');
    await until('ext-chat failed', async () => (await model('ext-chat')).state === 'failed');
    let again = null;
    await until('a new server after the cooldown', async () => {
        again = await client.chat.completions.create({ model: 'ext-chat',
                                                       messages: user('back') });
        return true;
    });
    assert.equal(again.choices[0].message.content, 'you said: back');
    const pid2 = (await child('/pid')).pid;
    assert.notEqual(pid2, pid);

    // Stopped by its ttl once idle: the state, and the process gone.
    await until('ext-chat unloaded by its ttl', async () =>
        (await model('ext-chat')).state === 'unloaded');
    await until('the server process gone', async () => !alive(pid2));
}

await runWith({
    larderd, dir, config, label: 'external openai', idle: ['ext-chat', 'ext-broken', 'gen'],
    tests: async (d) => {
        base = d.base;
        model = d.model;
        await tests();
    },
});
