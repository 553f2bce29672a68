// The public directory page as anyone sees it: the real `lienthong` binary
// (dev PKI, its directory imported, plus one agency whose name holds
// markup, as another province might send), an operator account so that
// the dashboard wants a login, then /directory in headless Chromium
// (Debian's /usr/bin/chromium, driven by playwright-core) without logging
// in: the heading, a search by code, by a name typed without diacritics,
// and the markup shown as text.
// A screenshot is kept in tests/artifacts/directory.png.
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

const B = "000.00.12.H35"; // Sở Khoa học và Công nghệ tỉnh Lai Châu
const HOSTILE = "000.00.77.H35";
const HOSTILE_NAME = `Ban <script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> "Đặc biệt"`;

const gw = newGateway("lienthong-directory-");
let browser;

before(async () => {
  await prepareGateway(gw);
  // An agency whose name holds markup (CSV-quoted), with a website.
  const csv = "organ_id,name,parent,email,telephone,address,website\n" +
    `${HOSTILE},"${HOSTILE_NAME.replaceAll('"', '""')}",000.00.00.H35,dacbiet@laichau.gov.vn,0213 3876 543,"Phường Tân Phong, thành phố Lai Châu",https://dacbiet.laichau.gov.vn\n`;
  await writeFile(join(gw.dir, "hostile.csv"), csv);
  await lt(gw, ["directory", "import", join(gw.dir, "hostile.csv")]);
  // The dashboard wants a login from now on.
  addOperator(gw, "Người Vận Hành", "viewer", "mật khẩu đủ dài của người vận hành");
  await serveGateway(gw);
});

after(() => stopGateway(gw, browser));

test("the public directory page finds agencies by code and by name without diacritics, without a login", async () => {
  browser = await launchChromium();
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 }, locale: "vi-VN" });
  const failed = watchFailures(page);
  page.on("response", (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });

  // The dashboard sends a stranger to its login form; the directory does not.
  await page.goto(`http://127.0.0.1:${gw.http}/`);
  await page.waitForSelector("#login-form", { timeout: 10000 });
  await page.goto(`http://127.0.0.1:${gw.http}/directory`);
  assert.equal(new URL(page.url()).pathname, "/directory");
  assert.equal(await page.locator("h1").innerText(), "Danh bạ mã định danh cơ quan, đơn vị");
  const rows = () => page.locator("#directory tbody tr");
  const codes = async () => rows().evaluateAll((trs) => trs.map((tr) => tr.dataset.code));
  assert.equal(await rows().count(), 5, "the four dev agencies and the one with markup");
  const headers = await page.locator("#directory thead th").allInnerTexts();
  assert.deepEqual(headers.map((h) => h.trim()), ["Mã định danh", "Tên cơ quan, đơn vị", "Cơ quan cấp trên",
    "Địa chỉ", "Thư điện tử", "Điện thoại", "Trang thông tin điện tử", "Trạng thái"]);

  // By code.
  await page.fill("#directory-q", B);
  await page.click("#directory-submit");
  await page.waitForURL(/q=000\.00\.12\.H35/, { timeout: 10000 });
  assert.deepEqual(await codes(), [B]);
  const row = page.locator(`#directory tbody tr[data-code="${B}"]`);
  assert.match(await row.innerText(), /Sở Khoa học và Công nghệ tỉnh Lai Châu/);
  assert.match(await row.locator("td.parent").innerText(), /000\.00\.00\.H35\s+Ủy ban nhân dân tỉnh Lai Châu/);
  assert.equal((await row.locator("td.status").innerText()).trim(), "đang hoạt động");

  // By a part of the name typed without diacritics.
  await page.fill("#directory-q", "uy ban nhan dan");
  await page.click("#directory-submit");
  await page.waitForURL(/q=uy(\+|%20)ban/, { timeout: 10000 });
  assert.deepEqual(await codes(), ["000.00.00.H35", "000.00.01.H35", "000.00.31.H35"]);
  assert.match(await page.locator("#directory-summary").innerText(), /3 cơ quan, đơn vị/);
  assert.equal(await page.inputValue("#directory-q"), "uy ban nhan dan");

  // Nothing found: a sentence.
  await page.fill("#directory-q", "khong co co quan nay");
  await page.click("#directory-submit");
  await page.waitForURL(/q=khong/, { timeout: 10000 });
  assert.equal(await rows().count(), 0);
  assert.match(await page.locator("#directory-summary").innerText(), /Không tìm thấy/);

  // Markup in a name is shown as text, and runs nothing.
  await page.fill("#directory-q", "dac biet");
  await page.click("#directory-submit");
  await page.waitForURL(/q=dac/, { timeout: 10000 });
  assert.deepEqual(await codes(), [HOSTILE]);
  const hostile = page.locator(`#directory tbody tr[data-code="${HOSTILE}"]`);
  assert.equal(await hostile.locator("td.name").innerText(), HOSTILE_NAME);
  assert.equal(await hostile.locator("td.name script, td.name img").count(), 0);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await hostile.locator("a[href='https://dacbiet.laichau.gov.vn']").count(), 1);

  // What was typed comes back as text in the search box, too.
  const typed = `"><script>window.__pwned = 3</script>`;
  await page.fill("#directory-q", typed);
  await page.click("#directory-submit");
  await page.waitForSelector("#directory-summary", { timeout: 10000 });
  assert.equal(await page.inputValue("#directory-q"), typed);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);

  await page.goto(`http://127.0.0.1:${gw.http}/directory?q=lai+chau`);
  await mkdir(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "directory.png"), fullPage: true });
  assert.deepEqual(failed, [], "every request of the page succeeded");

  // The JSON beside it, also without a login.
  const r = await fetch(`http://127.0.0.1:${gw.http}/api/public/directory?q=dac%20biet`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("access-control-allow-origin"), "*");
  const j = await r.json();
  assert.equal(j.total, 1);
  assert.equal(j.agencies[0].name, HOSTILE_NAME);
});
