// The dashboard as the province office sees it: the real `lienthong`
// binary (dev PKI, directory import, an operator account, serve on free
// ports), documents and a refused one sent with `lienthong send`, then the
// page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), reached through its login form.
// A screenshot is kept in tests/artifacts/dashboard.png.
//
// Run with tests/browser/run.sh (it installs what is missing).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  artifacts, newGateway, lt, prepareGateway, addOperator, serveGateway, stopGateway,
  launchChromium, watchFailures,
} from "./gateway.mjs";

const A = "000.00.01.H35"; // Văn phòng UBND tỉnh
const B = "000.00.12.H35"; // Sở Khoa học và Công nghệ
const C = "000.00.31.H35"; // UBND thành phố Lai Châu
const OPERATOR = "Nguyễn Văn Vận Hành";
const PASSWORD = "mật khẩu của bộ phận vận hành";

const gw = newGateway("lienthong-browser-");
let browser;

async function send(from, to, extra) {
  const { stdout } = await lt(gw, [
    "send", "--server", `http://127.0.0.1:${gw.grpc}`, "--from", from, "--to", to,
    "--key", join(gw.dir, "pki", `${from}.key.pem`), "--cert", join(gw.dir, "pki", `${from}.pem`),
    ...extra,
  ]);
  return JSON.parse(stdout.trim().split("\n").pop());
}

before(async () => {
  await prepareGateway(gw);
  // The operator who logs in below.
  addOperator(gw, OPERATOR, "admin", PASSWORD);
  await serveGateway(gw);
});

after(() => stopGateway(gw, browser));

test("the dashboard shows today's traffic, a refusal in plain words, and a trace", async () => {
  const d1 = await send(A, B, ["--code-number", "15", "--code-notation", "QĐ-UBND",
    "--subject", "Quyết định phê duyệt kế hoạch chuyển đổi số năm 2027"]);
  await send(A, C, ["--code-number", "16", "--code-notation", "QĐ-UBND", "--subject", "Quyết định về công tác văn thư"]);
  await send(B, A, ["--code-number", "42", "--code-notation", "BC-SKHCN", "--subject", "Báo cáo tình hình ứng dụng CNTT"]);
  assert.equal(d1.from, A);
  // One refused: the recipient is not in the directory.
  let refusedId = "";
  try {
    await send(A, "000.00.99.H35", ["--subject", "Gửi nhầm cơ quan"]);
    assert.fail("a document to an unknown agency was accepted");
  } catch (e) {
    assert.match(e.message, /UNKNOWN_RECIPIENT/);
  }
  // B takes its document and registers it (status 03).
  await lt(gw, ["receive", "--server", `http://127.0.0.1:${gw.grpc}`, "--as", B, "--ack"]);
  await send(B, A, ["--status", "03", "--document-from", A, "--document-id", d1.document_id]);

  browser = await launchChromium();
  const page = await browser.newPage({ viewport: { width: 1440, height: 1800 }, locale: "vi-VN" });
  const failed = watchFailures(page);
  // A stranger's request gets nothing.
  const stranger = await fetch(`http://127.0.0.1:${gw.http}/api/overview`);
  assert.equal(stranger.status, 401);

  // The dashboard sends the browser to the login form; wrong, then right.
  await page.goto(`http://127.0.0.1:${gw.http}/`);
  await page.waitForSelector("#login-form", { timeout: 10000 });
  await page.fill("#login-name", OPERATOR);
  await page.fill("#login-password", "không đúng mật khẩu");
  await page.click("#login-submit");
  await page.waitForSelector("#login-form .error, .error", { timeout: 10000 });
  assert.match(await page.locator(".error").innerText(), /không đúng/);
  await page.fill("#login-name", OPERATOR);
  await page.fill("#login-password", PASSWORD);
  await page.click("#login-submit");
  await page.waitForSelector("#today-documents", { timeout: 10000 });
  assert.equal(new URL(page.url()).pathname, "/");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "lienthong_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));

  const text = (sel) => page.locator(sel).innerText();
  await page.waitForFunction(() => document.getElementById("today-documents").textContent === "3", null, { timeout: 15000 });
  assert.equal(await text("#today-documents"), "3");
  assert.equal(await text("#today-refused"), "1");
  assert.equal(await text("#today-statuses"), "1");
  assert.equal(await text("#month-documents"), "3");
  assert.match(await text("#health-db"), /hoạt động bình thường/);
  const refusals = await text("#refusals");
  assert.match(refusals, /Cơ quan nhận không có trong danh bạ của trục liên thông/);
  assert.match(refusals, /Văn phòng Ủy ban nhân dân tỉnh Lai Châu/);
  refusedId = await page.locator("#refusals tbody tr[data-reason=UNKNOWN_RECIPIENT] a").first().innerText();
  assert.ok(refusedId.length > 0, "the refused message's id is shown");
  // C has not taken its document: the inbox table names it.
  assert.match(await text("#inboxes"), /Ủy ban nhân dân thành phố Lai Châu/);

  // Live: a new document shows up without reloading the page.
  await send(C, A, ["--code-number", "7", "--code-notation", "TB-UBND", "--subject", "Thông báo lịch họp"]);
  await page.waitForFunction(() => document.getElementById("today-documents").textContent === "4", null, { timeout: 15000 });

  // Search by số/ký hiệu shows the trace in Vietnamese words.
  await page.fill("#search-q", "15/QĐ-UBND");
  await page.click("#search-form button");
  await page.waitForSelector("#search-result .hit", { timeout: 10000 });
  const found = await text("#search-result");
  assert.match(found, /Quyết định phê duyệt kế hoạch chuyển đổi số năm 2027/);
  assert.match(found, /Trục liên thông đã tiếp nhận/);
  assert.match(found, /Cơ quan nhận đã xác nhận nhận/);
  assert.match(found, /Nhận trạng thái 03 \(Đã tiếp nhận\)/);

  // Something that does not exist gets a sentence, not an empty page.
  await page.fill("#search-q", "không-có-văn-bản-này");
  await page.click("#search-form button");
  await page.waitForSelector("#search-result .error", { timeout: 10000 });
  assert.match(await text("#search-result"), /Không tìm thấy/);

  // The refused message, found from its link, with its reason.
  await page.click(`#refusals a >> text=${refusedId}`);
  await page.waitForFunction(() => /Gói tin bị từ chối/.test(document.getElementById("search-result").innerText), null, { timeout: 10000 });
  assert.match(await text("#search-result"), /Cơ quan nhận không có trong danh bạ/);

  // The page names who is logged in; an admin announces a maintenance
  // window from it (a POST with the session's CSRF token).
  assert.equal(await text("#operator-name"), OPERATOR);
  assert.ok(await page.locator("#admin-section").isVisible(), "an admin sees the maintenance form");
  await page.fill("#announce-from", "2099-01-01T22:00");
  await page.fill("#announce-to", "2099-01-02T02:00");
  await page.fill("#announce-message", "Nâng cấp máy chủ cơ sở dữ liệu");
  // A rolling upgrade: the banner says no interruption is expected.
  await page.check("#announce-no-interruption");
  await page.click("#announce-form button");
  await page.waitForFunction(() => /Đã thông báo/.test(document.getElementById("announce-result").textContent), null, { timeout: 10000 });
  await page.waitForFunction(() => /Nâng cấp máy chủ cơ sở dữ liệu/.test(document.getElementById("maintenance").textContent), null, { timeout: 15000 });
  assert.match(await text("#maintenance"), /Lịch bảo trì, nâng cấp hệ thống: .*không dự kiến gián đoạn\./);
  assert.match(await text("#maintenance"), /no interruption expected/);

  await page.evaluate(() => window.scrollTo(0, 0));
  await mkdir(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "dashboard.png"), fullPage: true });
  assert.deepEqual(failed, [], "every request of the page succeeded");

  // The report download behind the page's link is a real workbook (with
  // the browser's session; without it, nothing).
  assert.equal((await fetch(`http://127.0.0.1:${gw.http}/reports/summary.xlsx`)).status, 401);
  const r = await page.context().request.get(`http://127.0.0.1:${gw.http}/reports/summary.xlsx`);
  assert.equal(r.status(), 200);
  const bytes = Buffer.from(await r.body());
  assert.equal(bytes.subarray(0, 2).toString(), "PK");
  await writeFile(join(artifacts, "bao-cao.xlsx"), bytes);

  // Logging out ends the session: the page is the login form again.
  await page.click("#logout");
  await page.waitForSelector("#login-form", { timeout: 10000 });
  const after = await page.context().request.get(`http://127.0.0.1:${gw.http}/api/overview`);
  assert.equal(after.status(), 401);
});
