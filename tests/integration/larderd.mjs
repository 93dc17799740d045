// A larderd of a test's own, for the tests that drive it with npm clients: started on a
// free loopback port with the test's config, checked for leases left out, stopped with
// SIGTERM (which must end it with status 0).
import { spawn } from 'node:child_process';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

export const WAIT_BOUND_MS = 60000;

// Polls cond until it holds (a throw counts as not yet), at most WAIT_BOUND_MS.
export async function until(what, cond) {
    const end = Date.now() + WAIT_BOUND_MS;
    for (;;) {
        try {
            if (await cond())
                return;
        } catch { /* not yet */ }
        if (Date.now() > end)
            throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
    }
}

// Writes config into dir, starts larderd on it, runs tests(d) once it answers, waits for
// the models named in idle to hold no lease, stops it, removes dir and exits: 0 when all
// went well, 1 (with larderd's log) otherwise. d: { base, model(name) }.
export async function runWith({ larderd, dir, config, label, idle, tests }) {
    writeFileSync(join(dir, 'larder.conf'), config);
    const daemon = spawn(larderd, ['--config', join(dir, 'larder.conf')],
                         { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    daemon.stderr.on('data', (b) => { log += b; });
    const d = {
        base: null, // once the listening line names the port
        async model(name) {
            return (await fetch(`${d.base}/v1/models/${name}`)).json();
        },
    };
    let status = 0;
    try {
        await until('larderd to listen', async () => {
            const m = /listening.*port=(\d+)/.exec(log);
            if (m)
                d.base = `http://127.0.0.1:${m[1]}`;
            return d.base !== null;
        });
        await until('larderd', async () => (await fetch(`${d.base}/health`)).ok);
        await tests(d);
        for (const name of idle)
            await until(`${name} idle`, async () => (await d.model(name)).leases === 0);
        console.log(`${label}: ok`);
    } catch (e) {
        console.error(e);
        console.error(log);
        status = 1;
    } finally {
        const exited = daemon.exitCode !== null || daemon.signalCode !== null
            ? Promise.resolve({ code: daemon.exitCode, signal: daemon.signalCode })
            : new Promise((r) => daemon.on('exit', (code, signal) => r({ code, signal })));
        daemon.kill('SIGTERM');
        const { code, signal } = await exited;
        if (code !== 0) {
            console.error(`larderd exited with ${code ?? signal} after SIGTERM`);
            console.error(log);
            status = 1;
        }
        rmSync(dir, { recursive: true, force: true });
    }
    process.exit(status);
}
