// The official `openai` and `ollama` npm clients, unmodified, against a real larderd
// serving the GGUF models the build writes (the llama backend).
//   node api_clients.mjs openai|ollama LARDERD MODELS_DIR NODE_MODULES
// Starts larderd on a free port with its own config, runs the client's calls, stops it.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { runWith, until } from './larderd.mjs';

const [which, larderd, models, nodeModules] = process.argv.slice(2);
const require = createRequire(join(nodeModules, 'noop.js'));

const dir = mkdtempSync(join(tmpdir(), 'larder-api-'));
writeFileSync(join(dir, 'admin.tokens'), 'test-admin-token-0123456789\n', { mode: 0o600 });
const config = `[server]
listen = 127.0.0.1:0
admin_tokens = admin.tokens

[model.gen]
backend = llama
path = ${models}/tiny-generator-f32.gguf
ctx = 512
threads = 1
max_tokens = 8

[model.emb]
backend = llama
path = ${models}/tiny-embedder-f32.gguf
embedding = yes
pooling = mean
threads = 1

[model.plain]
backend = synthetic
`;

let base = null;
let model = null;

async function openaiTests() {
    const { default: OpenAI } = require('openai');
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });

    // The models these routes serve: not the synthetic one.
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id).sort();
    assert.deepEqual(ids, ['emb', 'gen']);

    const chat = await client.chat.completions.create({
        model: 'gen', messages: [{ role: 'user', content: 'hello' }], max_tokens: 5,
        temperature: 0, seed: 1 });
    assert.equal(chat.object, 'chat.completion');
    assert.equal(chat.choices[0].message.role, 'assistant');
    assert.equal(typeof chat.choices[0].message.content, 'string');
    assert.equal(chat.usage.completion_tokens, 5);
    assert.equal(chat.choices[0].finish_reason, 'length');

    // Greedy: the stream's pieces add up to the same text as the whole reply.
    const stream = await client.chat.completions.create({
        model: 'gen', messages: [{ role: 'user', content: 'hello' }], max_tokens: 5,
        temperature: 0, seed: 1, stream: true, stream_options: { include_usage: true } });
    let text = '', chunks = 0, finish = null, usage = null;
    for await (const c of stream) {
        assert.equal(c.object, 'chat.completion.chunk');
        if (c.usage)
            usage = c.usage;
        for (const ch of c.choices) {
            text += ch.delta.content ?? '';
            finish = ch.finish_reason ?? finish;
        }
        chunks++;
    }
    assert.ok(chunks >= 3, `only ${chunks} chunks`);
    assert.equal(text, chat.choices[0].message.content);
    assert.equal(finish, 'length');
    assert.equal(usage.completion_tokens, 5);

    const done = await client.completions.create({ model: 'gen', prompt: 'once upon',
                                                   max_tokens: 4, temperature: 0 });
    assert.equal(done.object, 'text_completion');
    assert.equal(done.usage.completion_tokens, 4);
    assert.equal(typeof done.choices[0].text, 'string');

    // The client asks for base64 by default and decodes it; floats on request.
    const emb = await client.embeddings.create({ model: 'emb', input: ['alpha beta', 'gamma'] });
    assert.equal(emb.data.length, 2);
    const floats = await client.embeddings.create({ model: 'emb', input: 'alpha beta',
                                                    encoding_format: 'float' });
    assert.equal(emb.data[0].embedding.length, floats.data[0].embedding.length);
    for (let i = 0; i < floats.data[0].embedding.length; i++)
        assert.ok(Math.abs(emb.data[0].embedding[i] - floats.data[0].embedding[i]) < 1e-5);

    await assert.rejects(client.chat.completions.create({
        model: 'nosuch', messages: [{ role: 'user', content: 'x' }] }),
        (e) => e.status === 404 && e.code === 'model_not_found');
    const long = 'word '.repeat(2000);
    await assert.rejects(client.chat.completions.create({
        model: 'gen', messages: [{ role: 'user', content: long }] }),
        (e) => e.status === 400 && e.code === 'context_length_exceeded');
}

async function ollamaTests() {
    const { Ollama } = require('ollama');
    const client = new Ollama({ host: base });

    const chat = await client.chat({ model: 'gen', messages: [{ role: 'user', content: 'hi' }],
                                     options: { num_predict: 4, temperature: 0 } });
    assert.equal(chat.done, true);
    assert.equal(chat.message.role, 'assistant');
    assert.equal(chat.eval_count, 4);
    assert.ok(chat.total_duration > 0);

    const parts = await client.chat({ model: 'gen', messages: [{ role: 'user', content: 'hi' }],
                                      options: { num_predict: 4, temperature: 0 }, stream: true });
    let text = '', last = null;
    for await (const p of parts) {
        text += p.message.content;
        last = p;
    }
    assert.equal(last.done, true);
    assert.equal(text, chat.message.content);

    const gen = await client.generate({ model: 'gen', prompt: 'once', stream: false,
                                        options: { num_predict: 3, temperature: 0 } });
    assert.equal(gen.done, true);
    assert.equal(gen.eval_count, 3);

    const emb = await client.embed({ model: 'emb', input: ['alpha', 'beta gamma'] });
    assert.equal(emb.embeddings.length, 2);
    assert.ok(emb.embeddings[0].length > 0);

    const tags = await client.list();
    assert.deepEqual(tags.models.map((m) => m.name).sort(), ['emb', 'gen']);
    const ps = await client.ps();
    assert.ok(ps.models.some((m) => m.name === 'gen'));

    // keep_alive 0: unloaded once the reply is out.
    await client.generate({ model: 'gen', prompt: 'x', stream: false, keep_alive: 0,
                            options: { num_predict: 1 } });
    await until('gen unloaded', async () => (await model('gen')).state === 'unloaded');
    // An empty request loads; with keep_alive 0 it unloads.
    const load = await client.generate({ model: 'gen', prompt: '', stream: false,
                                         keep_alive: -1 });
    assert.equal(load.done_reason, 'load');
    assert.equal((await model('gen')).state, 'ready');
    assert.equal((await model('gen')).ttl_ms, -1);
    const unload = await client.generate({ model: 'gen', prompt: '', stream: false,
                                           keep_alive: 0 });
    assert.equal(unload.done_reason, 'unload');
    await until('gen unloaded again', async () => (await model('gen')).state === 'unloaded');

    await assert.rejects(client.chat({ model: 'nosuch', messages: [] }),
                         (e) => /nosuch/.test(e.message));
}

await runWith({
    larderd, dir, config, label: which, idle: ['gen', 'emb'],
    tests: async (d) => {
        base = d.base;
        model = d.model;
        await (which === 'openai' ? openaiTests() : ollamaTests());
    },
});
