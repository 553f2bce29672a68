// What every browser test needs before it opens a page: the real
// `lienthong` binary set up and serving in a throw-away directory, and a
// headless Chromium to look at it. Kept in one place so that the tests
// start the gateway the same way and differ only in what they check.

import assert from "node:assert/strict";
import { spawn, execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import { mkdtemp, rm, readFile } from "node:fs/promises";
import { existsSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
// run.sh builds into target/debug unless told otherwise; LIENTHONG_BIN lets
// a run reuse a binary that is already built.
export const bin = process.env.LIENTHONG_BIN || join(root, "target", "debug", "lienthong");
// Debian's chromium, not a downloaded one: playwright-core brings no browser.
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
// Outside the temporary directory, so that screenshots outlive the run.
export const artifacts = join(root, "tests", "artifacts");

// The OS picks a port nobody holds, so that tests (and other runs on the
// same machine) never fight over a fixed one.
export function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.unref();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

// The environment of every lienthong command: only our own LIENTHONG_ keys.
export function cleanEnv(extra) {
  const e = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("LIENTHONG_")) e[k] = v;
  }
  return { ...e, NO_COLOR: "1", ...extra };
}

// An empty gateway, made before `before` runs, so that `after` can clean up
// whatever part of the set-up got done even when the rest of it failed.
export function newGateway(prefix) {
  return { prefix, dir: undefined, env: undefined, grpc: 0, http: 0, server: undefined };
}

// Runs a lienthong command against the gateway; a failure carries the
// command's output, which is what one needs to see why.
export async function lt(gw, args) {
  try {
    return await run(bin, args, { env: gw.env, cwd: gw.dir, maxBuffer: 16 << 20 });
  } catch (e) {
    throw new Error(`lienthong ${args.join(" ")} failed (${e.code}):\n${e.stdout}\n${e.stderr}`);
  }
}

// Fails early, with the fix, when the binary or the browser is missing:
// otherwise the test would die later with a far less helpful error.
// The gateway gets the dev PKI and its directory, but is not serving yet:
// a test may add to it first.
export async function prepareGateway(gw) {
  assert.ok(existsSync(bin), `the lienthong binary is not at ${bin}: run \`cargo build -p lienthong\` first, or set LIENTHONG_BIN`);
  assert.ok(existsSync(chromiumPath), `Chromium is not at ${chromiumPath}: apt-get install -y chromium (tests/browser/run.sh does it)`);
  gw.dir = await mkdtemp(join(tmpdir(), gw.prefix));
  gw.grpc = await freePort();
  gw.http = await freePort();
  gw.env = cleanEnv({
    LIENTHONG_CONFIG: join(gw.dir, "pki", "lienthong.toml"),
    LIENTHONG_GRPC__LISTEN: `127.0.0.1:${gw.grpc}`,
    LIENTHONG_HTTP__LISTEN: `127.0.0.1:${gw.http}`,
    LIENTHONG_REPORTS__DIR: join(gw.dir, "reports"),
  });
  // dev-pki writes the configuration the other commands read.
  await run(bin, ["dev-pki", join(gw.dir, "pki")], { env: cleanEnv({}), cwd: gw.dir });
  await lt(gw, ["directory", "import", join(gw.dir, "pki", "directory.csv")]);
}

// The password goes on standard input, as a script gives it: that path is
// the one operators use, and it keeps the password off the command line.
export function addOperator(gw, name, role, password) {
  execFileSync(bin, ["operator", "add", name, "--role", role, "--password-stdin"],
    { env: gw.env, cwd: gw.dir, input: password + "\n" });
}

// Polls until the gateway says it is ready; if it exits or never gets
// there, the error carries the end of its log, which says why.
async function waitReady(gw, url, ms) {
  const end = Date.now() + ms;
  let last = "";
  while (Date.now() < end) {
    if (gw.server.exitCode !== null) break;
    try {
      const r = await fetch(url);
      if (r.ok) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const log = await readFile(join(gw.dir, "serve.log"), "utf8").catch(() => "");
  throw new Error(`lienthong serve was not ready at ${url} (${last}); its log:\n${log.slice(-4000)}`);
}

// The server's output goes to a file rather than a pipe, so that nobody
// has to drain it and waitReady can show it when start-up fails.
export async function serveGateway(gw) {
  const log = openSync(join(gw.dir, "serve.log"), "a");
  gw.server = spawn(bin, ["serve"], { env: gw.env, cwd: gw.dir, stdio: ["ignore", log, log] });
  await waitReady(gw, `http://127.0.0.1:${gw.http}/health/ready`, 30000);
}

// The browser first, while the server still answers it. The server gets a
// SIGTERM and time to shut down cleanly, and a SIGKILL only if it hangs, so
// that a stuck gateway cannot keep the test run alive. LIENTHONG_KEEP keeps
// the directory for looking into a failure.
export async function stopGateway(gw, browser) {
  if (browser) await browser.close().catch(() => {});
  const server = gw.server;
  if (server && server.exitCode === null) {
    const done = new Promise((ok) => server.once("exit", ok));
    server.kill("SIGTERM");
    await Promise.race([done, new Promise((ok) => setTimeout(ok, 10000))]);
    if (server.exitCode === null) server.kill("SIGKILL");
  }
  if (gw.dir && !process.env.LIENTHONG_KEEP) await rm(gw.dir, { recursive: true, force: true });
}

// No sandbox (tests often run as root in a container, where Chromium's
// sandbox will not start) and none of its background traffic, which would
// be noise, or fail, on a machine without the internet.
export function launchChromium() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// A page can look right while a request behind it failed or a script threw;
// the tests assert at the end that this list is still empty.
export function watchFailures(page) {
  const failed = [];
  page.on("requestfailed", (r) => failed.push(r.url()));
  page.on("pageerror", (e) => failed.push(String(e)));
  return failed;
}
