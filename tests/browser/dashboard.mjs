// Dashboard tests in a real headless Chromium (Debian's package) against a running stack.
// Started by tests/tests/dashboard.rs, which passes:
//   DROVER_HTTP         the coordinator's HTTP base URL
//   OPERATOR_TOKEN, VIEWER_TOKEN
//   SCREENSHOTS         directory for one screenshot per page
//   CHROMIUM            browser binary (default /usr/bin/chromium)
// Exits non-zero on the first failed check; prints `RESULT {json}` for the Rust side to
// cross-check over gRPC and on the host.

import { chromium } from "playwright-core";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BASE = process.env.DROVER_HTTP;
const OPERATOR = process.env.OPERATOR_TOKEN;
const VIEWER = process.env.VIEWER_TOKEN;
const SHOTS = process.env.SCREENSHOTS;
const T = 60_000;
if (!BASE || !OPERATOR || !VIEWER || !SHOTS) {
  console.error("DROVER_HTTP, OPERATOR_TOKEN, VIEWER_TOKEN and SCREENSHOTS must be set");
  process.exit(2);
}
mkdirSync(SHOTS, { recursive: true });
const result = {};

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

// The JSON API with a bearer token (what scripts use; the browser uses its session).
async function api(method, path, body, token = OPERATOR) {
  const r = await fetch(BASE + path, {
    method,
    headers: { authorization: "Bearer " + token, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

async function submit(argv, extra = {}) {
  const r = await api("POST", "/api/v1/jobs", {
    spec: { argv, retry: { max_retries: 0 }, ...extra },
  });
  return r.job.id;
}

async function waitState(id, states) {
  const until = Date.now() + T;
  while (Date.now() < until) {
    const r = await api("GET", "/api/v1/jobs/" + id);
    if (states.includes(r.job.state)) return r;
    await new Promise((res) => setTimeout(res, 200));
  }
  throw new Error(`job ${id} did not reach ${states}`);
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}

// One browser profile (a fresh --user-data-dir); each login starts without cookies.
async function login(ctx, token) {
  await ctx.clearCookies();
  const page = await ctx.newPage();
  page.setDefaultTimeout(T);
  await page.goto(BASE + "/ui/jobs");
  check(page.url().endsWith("/ui/login"), "a page without a session goes to the login form");
  await page.fill("#token", token);
  await Promise.all([page.waitForURL("**/ui/jobs"), page.click("#login")]);
  const cookies = await ctx.cookies();
  const c = cookies.find((c) => c.name === "drover_session");
  check(c && c.httpOnly && c.sameSite === "Strict", "session cookie is HttpOnly and SameSite=Strict");
  return page;
}

const userDir = mkdtempSync(join(tmpdir(), "drover-chromium-"));
// Playwright passes the profile directory as --user-data-dir itself.
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  acceptDownloads: true,
  viewport: { width: 1280, height: 800 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

try {
  // ---------------------------------------------------------------- login
  {
    const page = await browser.newPage();
    await page.goto(BASE + "/ui/login");
    await page.fill("#token", "drover_" + "0".repeat(64));
    await page.click("#login");
    await page.waitForSelector("#login-error");
    check((await page.textContent("#login-error")).includes("unknown"), "a wrong token is refused with a reason");
    await page.fill("#token", "");
    await page.screenshot({ path: join(SHOTS, "login.png") });
    await page.close();
  }
  const page = await login(browser, OPERATOR);

  // ---------------------------------------------------------------- live job list
  await page.evaluate(() => { window.__noReload = true; });
  check(await page.isVisible("#live.on") || (await page.waitForSelector("#live.on")), "live feed connected");
  const quick = await submit(["sh", "-c", "sleep 1; echo quick"], { queue: "web" });
  await page.waitForSelector(`tr[data-job="${quick}"]`);
  console.log("ok - a submitted job appears without a reload");
  await page.waitForSelector(`tr[data-job="${quick}"][data-state="succeeded"]`);
  check(await page.evaluate(() => window.__noReload === true), "the page was never reloaded");
  console.log("ok - it turns succeeded without a reload");
  await page.waitForFunction(() => document.querySelector("#health") !== null);

  // ---------------------------------------------------------------- retry button
  const failing = await submit(["sh", "-c", "echo failing >&2; exit 3"], { queue: "web" });
  await waitState(failing, ["JOB_STATE_PERMANENT_FAILED"]);
  await page.goto(BASE + "/ui/jobs/" + failing);
  await page.click(`button.retry[data-job="${failing}"]`);
  const link = await page.waitForSelector("#action-result a.created-job");
  const retried = (await link.textContent()).trim();
  check(retried !== failing && retried.length === 36, "the retry button created a new job");
  await page.waitForSelector(`#chain a.retried-by[href="/ui/jobs/${retried}"]`);
  console.log("ok - the original's page shows the retry, live");
  await page.click("#action-result a.created-job");
  await page.waitForSelector(`#chain a.retry-of[href="/ui/jobs/${failing}"]`);
  console.log("ok - the new job's page links back to the failed one");
  await waitState(retried, ["JOB_STATE_PERMANENT_FAILED"]);
  await page.goto(BASE + "/ui/jobs/" + failing);
  await page.screenshot({ path: join(SHOTS, "job.png"), fullPage: true });
  result.retry = { from: failing, to: retried };

  // ---------------------------------------------------------------- rerun with params
  const withParams = await submit(["sh", "-c", "echo {day}; exit 4"], { queue: "web", params: { day: "mon" } });
  await waitState(withParams, ["JOB_STATE_PERMANENT_FAILED"]);
  await page.goto(BASE + "/ui/jobs/" + withParams);
  await page.fill('#rerun input[name="day"]', "tue");
  await page.click("#rerun button");
  const rerunLink = await page.waitForSelector("#action-result a.created-job");
  const rerun = (await rerunLink.textContent()).trim();
  const rerunJob = (await api("GET", "/api/v1/jobs/" + rerun)).job;
  check(rerunJob.spec.params.day === "tue" && rerunJob.retry_of === withParams, "the rerun form creates a job with the changed param");

  // ---------------------------------------------------------------- follow + cancel
  const script =
    'echo "pid=$$"; i=0; while true; do i=$((i+1)); echo "line-$i été"; ' +
    'printf "\\033[31merr-$i\\033[0m\\n" >&2; sleep 0.3; done';
  const running = await submit(["sh", "-c", script], { queue: "web" });
  await waitState(running, ["JOB_STATE_RUNNING"]);
  await page.goto(BASE + "/ui/jobs/" + running + "/log");
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("pid="));
  const pid = Number((await page.textContent("#log")).match(/pid=(\d+)/)[1]);
  check(pid > 1 && alive(pid), `the job's shell (pid ${pid}) runs on this host`);
  // Lines written after the page opened arrive while following.
  const seen = await page.evaluate(() => {
    const m = [...document.getElementById("log").textContent.matchAll(/line-(\d+)/g)];
    return m.length ? Number(m[m.length - 1][1]) : 0;
  });
  await page.waitForFunction(
    (n) => document.getElementById("log").textContent.includes("line-" + n), seen + 4);
  console.log(`ok - following shows new lines as they are written (line-${seen} -> line-${seen + 4})`);
  check(await page.isVisible("#log .line.stderr"), "stderr lines are marked as stderr");
  check((await page.textContent("#log")).includes("line-2 été"), "UTF-8 output is shown as written");
  check(await page.isVisible("#log .line.stderr .fg-red"), "ANSI red is rendered as a colour");
  await page.screenshot({ path: join(SHOTS, "log.png") });
  await page.click(`button.cancel[data-job="${running}"]`);
  const until = Date.now() + T;
  while (alive(pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  check(!alive(pid), `cancel stopped the process (pid ${pid} is gone)`);
  await page.waitForFunction(() => document.getElementById("log").dataset.ended === "1");
  console.log("ok - the viewer says the attempt ended");
  result.cancelled = { job: running, pid };

  // ---------------------------------------------------------------- download
  const dl = await submit([
    "sh", "-c",
    'i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo "row $i of the download test"; done; ' +
      'mkdir -p out; printf "artifact-bytes\\n" > out/data.txt',
  ], { queue: "web", outputs: ["out/data.txt"] });
  await waitState(dl, ["JOB_STATE_SUCCEEDED"]);
  let expected = "";
  for (let i = 1; i <= 3000; i++) expected += `row ${i} of the download test\n`;
  await page.goto(BASE + "/ui/jobs/" + dl + "/log");
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("row 3000"));
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const got = readFileSync(await download.path());
  check(got.equals(Buffer.from(expected)), `the log download is exactly the ${expected.length} bytes written`);
  await page.goto(BASE + "/ui/jobs/" + dl);
  const sha = (await page.textContent("#artifacts code.sha")).trim();
  const [art] = await Promise.all([page.waitForEvent("download"), page.click("#artifacts a.download")]);
  const artBytes = readFileSync(await art.path());
  check(artBytes.toString() === "artifact-bytes\n", "the artifact download is the file the job wrote");
  check(createHash("sha256").update(artBytes).digest("hex") === sha, "the SHA-256 shown is the download's");
  result.download = { job: dl, bytes: got.length };

  // ---------------------------------------------------------------- big log, cap marker
  // The coordinator keeps 1 MiB of each log (test setting): 4 MB written leaves a gap.
  const big = await submit(["sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' x | fold -w 99"], { queue: "web" });
  await waitState(big, ["JOB_STATE_SUCCEEDED"]);
  await page.goto(BASE + "/ui/jobs/" + big + "/log");
  await page.waitForSelector("#log .line");
  check(await page.isVisible("#earlier"), "a big log opens at its tail, with earlier output to load");
  const tailLines = await page.$$eval("#log .line", (l) => l.length);
  for (let i = 0; i < 40; i++) {
    const n = await page.$$eval("#log .line", (l) => l.length);
    // Checked and clicked in one step in the page: a load the page started itself (a
    // scroll to the top clicks too) may hide the button between a check and a click.
    const clicked = await page.evaluate(() => {
      const b = document.getElementById("earlier");
      if (b.hidden) return false;
      b.click();
      return true;
    });
    if (!clicked) break;
    await page.waitForFunction((n) => document.querySelectorAll("#log .line").length > n, n);
  }
  const allLines = await page.$$eval("#log .line", (l) => l.length);
  check(allLines > tailLines, `earlier output loads on demand (${tailLines} -> ${allLines} lines)`);
  const marker = await page.textContent("#log .line.marker");
  check(marker && marker.includes("bytes of output dropped"), "the cap's 'bytes dropped' marker is shown");
  check((await page.textContent("#log-status")).includes("bytes dropped"), "the toolbar says how much was dropped");

  // ---------------------------------------------------------------- bulk retry preview
  const queue = "bulk";
  const failed = [];
  for (let i = 0; i < 3; i++) failed.push(await submit(["sh", "-c", `exit ${i + 1}`], { queue }));
  const ok = await submit(["true"], { queue });
  const elsewhere = await submit(["false"], { queue: queue + "-other" });
  for (const id of failed.concat([elsewhere])) await waitState(id, ["JOB_STATE_PERMANENT_FAILED"]);
  await waitState(ok, ["JOB_STATE_SUCCEEDED"]);
  await page.goto(BASE + "/ui/jobs?queue=" + queue);
  await page.click("details.bulk summary");
  await page.selectOption("#bulk-state", "permanent_failed");
  await page.fill("#bulk-queue", queue);
  await page.click("#bulk-preview");
  await page.waitForSelector("#bulk-list");
  const listed = await page.$$eval("#bulk-list li", (lis) => lis.map((l) => l.dataset.job));
  check(
    listed.length === 3 && failed.every((id) => listed.includes(id)),
    `bulk retry preview lists exactly the 3 matching jobs (got ${listed.length})`,
  );
  await page.screenshot({ path: join(SHOTS, "jobs.png"), fullPage: true });
  await page.click("#bulk-confirm");
  await page.waitForSelector("#bulk-done");
  check((await page.textContent("#bulk-done")).includes("Retried 3 jobs"), "bulk retry retried them");
  result.bulk = { queue, failed };

  // ---------------------------------------------------------------- other pages
  for (const [name, path] of [["workers", "/ui/workers"], ["queues", "/ui/queues"], ["failures", "/ui/failures"]]) {
    await page.goto(BASE + path);
    await page.waitForSelector("main h1");
    await page.screenshot({ path: join(SHOTS, name + ".png"), fullPage: true });
    if (name === "workers") {
      check((await page.$$("#workers tbody tr[data-worker]")).length >= 1, "the workers page lists the worker");
    }
    if (name === "failures") {
      check((await page.$$("#failures button.retry-group")).length >= 1, "the failures page lists a group with a retry button");
      const fp = await page.getAttribute("#failures button.retry-group", "data-fingerprint");
      const groupJobs = (await api("POST", "/api/v1/jobs/retry", { fingerprint: fp, dry_run: true, limit: 1000 })).matched.length;
      await page.click("#failures button.retry-group");
      await page.waitForSelector("#action-result p.ok");
      const said = await page.textContent("#action-result p.ok");
      check(groupJobs > 0 && said.includes(`Retried ${groupJobs} jobs`), `a group's retry button retries its ${groupJobs} jobs ("${said}")`);
    }
  }
  await page.goto(BASE + "/ui/queues");
  check(await page.isVisible(`#queues tr[data-queue="${queue}"]`), "the queues page lists the bulk queue");

  // A request without the CSRF header is refused even with the operator's session.
  const noCsrf = await page.evaluate(async (id) =>
    (await fetch("/api/v1/jobs/" + id + "/retry", { method: "POST" })).status, failing);
  check(noCsrf === 403, `a POST without the CSRF token is refused (${noCsrf})`);
  await page.close();

  // ---------------------------------------------------------------- viewer
  const vp = await login(browser, VIEWER);
  await vp.goto(BASE + "/ui/jobs");
  await vp.waitForSelector("#jobs");
  check((await vp.$$("button.retry, button.cancel, #bulk-preview")).length === 0, "a viewer sees no action buttons on the jobs page");
  await vp.goto(BASE + "/ui/jobs/" + failing);
  check((await vp.$$("main button")).length === 0, "a viewer sees no buttons on a job page");
  const before = (await api("GET", "/api/v1/jobs/" + failing)).retried_by.length;
  const forged = await vp.evaluate(async (id) => {
    const csrf = document.querySelector('meta[name="csrf"]').content;
    const r = await fetch("/api/v1/jobs/" + id + "/retry", { method: "POST", headers: { "X-CSRF-Token": csrf } });
    return { status: r.status, body: await r.json() };
  }, failing);
  check(forged.status === 403 && forged.body.code === "PERMISSION_DENIED", `a viewer's forged retry is refused (${forged.status} ${forged.body.message})`);
  const after = (await api("GET", "/api/v1/jobs/" + failing)).retried_by.length;
  check(before === after, "and created nothing");
  result.viewer = { forged_status: forged.status, job: failing };
} finally {
  await browser.close();
}
console.log("RESULT " + JSON.stringify(result));
