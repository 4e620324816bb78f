#!/usr/bin/env python3
"""The operator portal in a real browser: Playwright driving Chromium
headless against a running `trefoil up -f examples/edgesecurity`. Run by
the e2e test `portal`; it opens every page, checks what it shows, makes a
bad edit (an unknown field, a Lua syntax error) and checks nothing changed,
makes a good edit and waits for every proxy to acknowledge it, opens a
request's trace, fails on any browser console error, and leaves screenshots
of every page at two widths. Prints one JSON line of figures, and on stderr
a table of each page's time to data (also saved as timings.json beside the
screenshots)."""

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

CNF = "edge-security"
WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Loads of each page its time to data is the median of.
LOADS = 5


TOKEN = {"value": ""}


def api(base, path):
    request = urllib.request.Request(base.rstrip("/") + path, headers={"Authorization": f"Bearer {TOKEN['value']}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def put(base, path, text):
    """A write by someone else, straight to the API."""
    request = urllib.request.Request(base.rstrip("/") + path, data=text.encode(), method="PUT", headers={"Content-Type": "application/yaml", "Authorization": f"Bearer {TOKEN['value']}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def post(base, path, body, token=None):
    request = urllib.request.Request(base.rstrip("/") + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", "Authorization": f"Bearer {token or TOKEN['value']}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def through_gateway_full(gateway, method, path, body=None):
    """A client's request through the gateway (the user traffic of the
    walkthrough); its status and headers."""
    request = urllib.request.Request(f"http://{gateway}{path}", data=body.encode() if body is not None else None, method=method,
                                     headers={"Host": "web.local", "Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def acked(base):
    """Each proxy's acknowledged revision, as the API reports it."""
    return {p["name"]: p.get("ackedVersion") for p in api(base, "/api/v1/status/proxies")["items"]}


def settled(base):
    """Waits until every proxy is connected and has acknowledged the latest
    revision compiled for it; their acked revisions."""
    deadline = time.monotonic() + 60
    while True:
        status = api(base, "/api/v1/status/proxies")
        items = status["items"]
        if items and all(p.get("connected") and p.get("ackedVersion") and p.get("ackedVersion") == p.get("latestVersion") for p in items):
            return {p["name"]: p["ackedVersion"] for p in items}
        assert time.monotonic() < deadline, f"the proxies did not settle: {status}"
        time.sleep(0.2)


# The handlers of the example's two changes (examples/edgesecurity/changes),
# typed into the portal's handler editor.
SCAN_AFTER_INSPECT = 'if event.data.result == "clean" then\n  trefoil.call("antivirus")\nend\n'
SCAN_UPLOADS_ON_POLICY = 'if event.data.rule == "uploads" then\n  trefoil.call("antivirus")\nend\n'


def through_gateway(gateway, host, path="/"):
    """One request through the mesh's gateway; its status."""
    request = urllib.request.Request(f"http://{gateway}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# The Rollout of shop (its workloads and Route come with the mesh): v2
# held at 20% by a long pause until a button moves it.
SHOP = [
    ("rollouts/shop", "apiVersion: trefoil.dev/v1alpha1\nkind: Rollout\nmetadata: {name: shop}\nspec:\n  service: shop\n  stable: v1\n  canary: v2\n  route: shop\n  strategy:\n    canary:\n      steps:\n      - setWeight: 20\n      - pause: 1h\n  analysis:\n    interval: 1s\n    threshold: 100\n    minRequests: 1\n    metrics:\n    - successRate: {min: 50}\n"),
]


def containing(text):
    """A value matcher for `to_have_value`: the text anywhere in it."""
    return re.compile(".*" + re.escape(text) + ".*", re.S)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--portal", required=True, help="the portal's URL, http://ADDR/")
    p.add_argument("--token", required=True, help="an admin API token, for the script's own calls")
    p.add_argument("--login-link", required=True, help="a one-time login link, as `trefoil portal login-link` prints")
    p.add_argument("--chromium", required=True, help="the browser executable (never downloaded)")
    p.add_argument("--screenshots", required=True)
    p.add_argument("--change", required=True, help="a CNF YAML file to apply from the editor")
    p.add_argument("--trace-id", required=True, help="a request's trace id to find and open")
    p.add_argument("--gateway", required=True, help="the gateway's address, ip:port, to send requests the dashboard shows live")
    p.add_argument("--infected", required=True, help="a file holding the EICAR test string: the infected upload, and web's /files/setup.exe")
    p.add_argument("--assets", help="serve portal.js and portal.css from this folder instead of the binary's (to try a change without rebuilding)")
    a = p.parse_args()
    TOKEN["value"] = a.token
    os.makedirs(a.screenshots, exist_ok=True)
    base = a.portal.rstrip("/")
    change = open(a.change, encoding="utf-8").read()
    infected = open(a.infected, encoding="utf-8").read()
    errors = []
    figures = {}

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport=WIDE)
        page.set_default_timeout(20_000)
        expect.set_options(timeout=20_000)
        logging_in = {"now": True}

        def console(m):
            # Chromium logs every 4xx answer; the refusals of the bad edits are the point,
            # and so are the 401s of a page opened without a token.
            expected = m.location.get("url", "").endswith("/api/v1/validate") and ("status of 422" in m.text or "status of 409" in m.text)
            expected = expected or (logging_in["now"] and "status of 401" in m.text)
            if m.type == "error" and not expected:
                errors.append(f"console {m.type}: {m.text} at {m.location}")

        page.on("console", console)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        if a.assets:
            for name, kind in (("portal.js", "text/javascript"), ("portal.css", "text/css")):
                body = open(os.path.join(a.assets, name), encoding="utf-8").read()
                page.route(f"**/portal/{name}", lambda route, _request, body=body, kind=kind: route.fulfill(body=body, content_type=kind))

        def shoot(name):
            page.set_viewport_size(WIDE)
            page.screenshot(path=os.path.join(a.screenshots, f"{name}-1280.png"), full_page=True)
            page.set_viewport_size(PHONE)
            # Wide tables scroll inside their box; the page itself must not.
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"{name} is {overflow}px wider than a 390px screen"
            page.screenshot(path=os.path.join(a.screenshots, f"{name}-390.png"), full_page=True)
            page.set_viewport_size(WIDE)

        # Time to data, per page: from navigation start to the page's
        # first data on screen, as the portal marks it (body[data-ready],
        # ms since navigation start), over LOADS loads of the page; the
        # median is reported. Measured, never asserted: the figures depend
        # on the machine.
        timings = {}

        def load_figures():
            expect(page.locator("body[data-ready]")).to_be_attached()
            return page.evaluate(
                "[Number(document.body.dataset.ready),"
                " Math.round(performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd)]")

        def timed_goto(name, path, ready):
            start = time.monotonic()
            page.goto(base + path)
            expect(ready).to_be_visible()
            figures[f"{name}Ms"] = round((time.monotonic() - start) * 1000, 1)
            data, dom = load_figures()
            samples, doms = [data], [dom]
            for _ in range(LOADS - 1):
                page.reload()
                expect(ready).to_be_visible()
                data, dom = load_figures()
                samples.append(data)
                doms.append(dom)
            timings[name] = {"dataMs": samples, "medianDataMs": statistics.median(samples), "medianDomMs": statistics.median(doms)}
            figures[f"{name}DataMs"] = statistics.median(samples)
            figures[f"{name}DomMs"] = statistics.median(doms)

        # Without a token the page asks for one; the one-time login link
        # (`trefoil up` and `trefoil portal login-link` print one) logs in,
        # and its code leaves the address bar.
        page.goto(base + "/")
        expect(page.locator("#login")).to_be_visible()
        logging_in["now"] = False
        page.goto(a.login_link)
        expect(page.locator("#proxies tbody tr td", has_text="gateway").first).to_be_visible()
        assert "login=" not in page.url, f"the login code stayed in the address bar: {page.url}"
        expect(page.locator("#login")).to_have_count(0)

        # The same link again, in a fresh browser context (no session): refused, and said why.
        again = browser.new_context(viewport=WIDE)
        reused = again.new_page()
        reused.on("console", lambda m: m.type == "error" and "status of 401" not in m.text and errors.append(f"console {m.type}: {m.text} at {m.location}"))
        reused.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        reused.goto(a.login_link)
        expect(reused.locator("#login")).to_be_visible(timeout=20_000)
        expect(reused.locator("#login-error")).to_contain_text("already used", timeout=20_000)
        assert "login=" not in reused.url, f"the spent code stayed in the address bar: {reused.url}"
        reused.screenshot(path=os.path.join(a.screenshots, "login-reused-1280.png"))
        again.close()

        # Dashboard: the proxies as `trefoil get proxies` shows them, services, workloads.
        timed_goto("dashboard", "/", page.locator("#proxies tbody tr td", has_text="gateway").first)
        expect(page.locator("#proxies")).to_contain_text("yes")
        expect(page.locator("#services")).to_contain_text("web")
        expect(page.locator("#workloads")).to_contain_text("antivirus")
        expect(page.locator("nav a[aria-current=page]")).to_have_text("Dashboard")

        # Live: a request through the gateway shows up without a reload.
        total = "Array.from(document.querySelectorAll('#traffic tr[data-service=web]')).reduce((n, r) => n + Number(r.dataset.total), 0)"
        page.evaluate("window.notReloaded = true")
        expect(page.locator("#updated[data-seq]")).to_be_visible()
        before = page.evaluate(total)
        assert through_gateway(a.gateway, "web.local") == 200
        page.wait_for_function(f"() => ({total}) > {before}")
        assert page.evaluate("window.notReloaded === true"), "the dashboard reloaded"
        expect(page.locator("#traffic tbody tr[data-service=web]").first).to_be_visible()
        shoot("dashboard")

        # CNF Provisioning: the tables.
        timed_goto("cnfs", "/cnfs", page.locator("#cnfs tbody tr", has_text=CNF))
        row = page.locator("#cnfs tbody tr", has_text=CNF)
        expect(row).to_contain_text("policy (callout / request)")
        expect(row).to_contain_text("inspect (callout / response)")
        expect(row).to_contain_text("edge")
        expect(page.locator("#functions")).to_contain_text("antivirus")
        expect(page.locator("#functions tbody tr", has_text="policy")).to_contain_text("1 of 1 ready")
        shoot("cnfs")

        row.get_by_role("button", name="Edit").click()
        box = page.locator("#yaml")
        expect(box).to_have_value(containing(f"name: {CNF}"))
        before = api(base, f"/api/v1/cnfs/{CNF}")["metadata"]["resourceVersion"]
        loaded = box.input_value()
        assert "resourceVersion:" in loaded, loaded
        # Every proxy at the same revision before the bad edits: none may move.
        acked_before = settled(base)
        apply_button = page.get_by_role("button", name="Confirm and apply")

        # Bad edit 1: an unknown field, reported at its line and field.
        lines = loaded.split("\n")
        at = lines.index("spec:") + 1
        lines.insert(at, "  colour: blue")
        box.fill("\n".join(lines))
        page.get_by_role("button", name="Check", exact=True).click()
        problem = page.locator("#problems .problem").first
        expect(problem).to_contain_text(f"line {at + 1}")
        expect(problem).to_contain_text("colour")
        expect(page.locator("#gutter .mark")).to_have_text(str(at + 1))
        expect(apply_button).to_be_disabled()
        shoot("cnfs-unknown-field")

        # Bad edit 2: a Lua syntax error in a handler, at its line.
        broken = change.replace('trefoil.call("antivirus")', 'trefoil.call("antivirus"')
        assert broken != change
        broken_line = next(i + 1 for i, l in enumerate(broken.split("\n")) if 'trefoil.call("antivirus"' in l)
        box.fill(broken)
        page.get_by_role("button", name="Check", exact=True).click()
        problem = page.locator("#problems .problem").first
        expect(problem).to_contain_text("spec.handlers.inspect_done")
        expect(problem).to_contain_text("syntax error")
        shown = int(problem.get_attribute("data-line"))
        figures["luaErrorLine"] = shown
        figures["luaBrokenLine"] = broken_line
        handler_key = next(i + 1 for i, l in enumerate(broken.split("\n")) if "inspect_done:" in l)
        assert handler_key < shown <= broken_line + 1, f"the Lua error is shown at line {shown}, the handler is at {handler_key}..{broken_line}"
        expect(apply_button).to_be_disabled()
        shoot("cnfs-lua-error")
        assert api(base, f"/api/v1/cnfs/{CNF}")["metadata"]["resourceVersion"] == before, "a bad edit changed the CNF"
        assert acked(base) == acked_before, f"a bad edit moved a proxy: {acked(base)} after {acked_before}"

        # The walkthrough, step 1, in the handler editor: the antivirus call
        # added to inspect_done. A syntax error first: shown at its line of
        # the script as it is typed, refused on save, nothing applied.
        page.get_by_role("button", name="Reload from the control plane").click()
        expect(box).to_have_value(containing(f'resourceVersion: "{before}"'))
        lua = page.locator("#lua")
        expect(lua).to_be_enabled()
        page.locator("#h-event").select_option("inspect_done")
        expect(lua).to_have_value("")
        lua.fill('if event.data.result == "clean" then\n  trefoil.call("antivirus"\nend\n')
        lua_problem = page.locator("#lua-problems .problem").first
        expect(lua_problem).to_contain_text("inspect_done")
        lua_line = int(lua_problem.get_attribute("data-line"))
        figures["handlerErrorLine"] = lua_line
        assert lua_line in (2, 3), f"the handler's syntax error is shown at its line {lua_line}, the call is on line 2"
        expect(page.locator("#h-gutter .mark")).to_have_text(str(lua_line))
        page.get_by_role("button", name="Save handlers").click()
        expect(page.locator("#problems .problem").first).to_contain_text("spec.handlers.inspect_done")
        expect(apply_button).to_be_disabled()
        shoot("cnfs-handler-error")
        assert api(base, f"/api/v1/cnfs/{CNF}")["metadata"]["resourceVersion"] == before, "a bad handler changed the CNF"
        assert acked(base) == acked_before, f"a bad handler moved a proxy: {acked(base)} after {acked_before}"

        lua.fill(SCAN_AFTER_INSPECT)
        expect(page.locator("#lua-problems [data-state=compiled]")).to_contain_text("inspect_done")
        # Highlighted under the text as typed: keywords, strings, the trefoil API.
        expect(page.locator("#lua-colour .lua-api", has_text="trefoil.call")).to_have_count(1)
        expect(page.locator("#lua-colour .lua-kw", has_text="then")).to_have_count(1)
        expect(page.locator("#lua-colour .lua-str", has_text='"antivirus"')).to_have_count(1)
        expect(page.locator("#h-gutter .mark")).to_have_count(0)
        page.get_by_role("button", name="Save handlers").click()
        # The diff before anything is stored; Apply confirms it.
        expect(page.locator("#diff .add", has_text="inspect_done: |")).to_be_visible()
        expect(page.locator("#diff .add", has_text='trefoil.call("antivirus")')).to_be_visible()
        assert api(base, f"/api/v1/cnfs/{CNF}")["metadata"]["resourceVersion"] == before, "saving stored before the confirmation"
        shoot("cnfs-diff")
        start = time.monotonic()
        apply_button.click()
        expect(page.locator("#acks-summary[data-done]")).to_have_attribute("data-done", "acked", timeout=30_000)
        figures["applyToAllAckedMs"] = round((time.monotonic() - start) * 1000, 1)
        expect(page.locator("#acks-summary")).to_contain_text("Every proxy acknowledged")
        proxies = len(acked_before)
        expect(page.locator("#acks tbody tr[data-state=ok]")).to_have_count(proxies)
        after = api(base, f"/api/v1/cnfs/{CNF}")
        assert int(after["metadata"]["resourceVersion"]) > int(before), after
        assert 'trefoil.call("antivirus")' in after["spec"].get("handlers", {}).get("inspect_done", ""), after
        for proxy, revision in acked(base).items():
            assert int(revision) > int(acked_before[proxy]), f"{proxy} did not move: {revision}"
        # The editor now holds the stored version: applying again is a no-op.
        expect(box).to_have_value(containing(f'resourceVersion: "{after["metadata"]["resourceVersion"]}"'))
        expect(row).to_contain_text("inspect_done")
        shoot("cnfs-applied")

        # The user's traffic: an infected upload, denied by the antivirus;
        # CNF Tracing shows it with the virus_found event.
        status, headers = through_gateway_full(a.gateway, "POST", "/upload", infected)
        assert status == 451, f"an infected upload after step 1: {status}"
        upload_trace = headers["x-trefoil-trace-id"]
        status, _ = through_gateway_full(a.gateway, "GET", "/files/setup.exe")
        assert status == 451, f"an infected download after step 1: {status}"
        page.goto(base + "/traces")
        page.locator("#f-event").fill("virus_found")
        infected_row = page.locator(f"#traces tr[data-trace='{upload_trace}']")
        expect(infected_row).to_contain_text("virus_found")
        expect(infected_row).to_contain_text(CNF)
        infected_row.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#trace-id")).to_have_text(upload_trace)
        scan = page.locator("#waterfall .span[data-span='call antivirus'][data-events~=virus_found]")
        expect(scan).to_be_visible()
        expect(scan).to_have_attribute("data-verdict", "deny")
        expect(scan).to_contain_text("deny 451")
        scan.click()
        expect(page.locator("#span-detail")).to_contain_text("event virus_found")
        expect(page.locator("#span-detail")).to_contain_text("trefoil.verdict = deny")
        shoot("traces-virus-found")

        # Step 2: the call moves under policy_check, for uploads only.
        page.goto(base + "/cnfs")
        row.get_by_role("button", name="Edit").click()
        expect(box).to_have_value(containing(f'resourceVersion: "{after["metadata"]["resourceVersion"]}"'))
        expect(page.locator("#h-event")).to_have_value("inspect_done")
        expect(lua).to_have_value(containing('trefoil.call("antivirus")'))
        page.get_by_role("button", name="Remove this handler").click()
        expect(lua).to_have_value("")
        page.locator("#h-event").select_option("policy_check")
        lua.fill(SCAN_UPLOADS_ON_POLICY)
        expect(page.locator("#lua-problems [data-state=compiled]")).to_contain_text("policy_check")
        # An edit made meanwhile in the YAML editor is kept by the save.
        box.fill(box.input_value().replace(f"  name: {CNF}\n", f"  name: {CNF}\n  labels: {{team: edge}}\n"))
        page.get_by_role("button", name="Save handlers").click()
        expect(page.locator("#diff .add", has_text="team: edge")).to_be_visible()
        expect(page.locator("#diff .del", has_text="inspect_done: |")).to_be_visible()
        expect(page.locator("#diff .add", has_text="policy_check: |")).to_be_visible()
        apply_button.click()
        expect(page.locator("#acks-summary[data-done]")).to_have_attribute("data-done", "acked", timeout=30_000)
        expect(page.locator("#acks tbody tr[data-state=ok]")).to_have_count(proxies)
        moved = api(base, f"/api/v1/cnfs/{CNF}")
        assert list(moved["spec"].get("handlers", {})) == ["policy_check"], moved
        assert moved["metadata"].get("labels") == {"team": "edge"}, moved
        expect(row).to_contain_text("policy_check")
        shoot("cnfs-moved")
        status, headers = through_gateway_full(a.gateway, "GET", "/files/setup.exe")
        assert status == 200, f"a download after step 2 is no longer scanned: {status}"
        download_trace = headers["x-trefoil-trace-id"]
        assert through_gateway_full(a.gateway, "POST", "/upload", infected)[0] == 451, "uploads are still scanned"
        # CNF Tracing: the download ran the chain to its response step, no scan.
        page.goto(base + "/traces")
        page.locator("#f-path").fill("/files/setup.exe")
        download_row = page.locator(f"#traces tr[data-trace='{download_trace}']")
        expect(download_row).to_contain_text(CNF)
        download_row.click()
        expect(page.locator("#waterfall .span[data-span='chain inspect response']")).to_be_visible()
        expect(page.locator("#waterfall .span[data-span='call antivirus']")).to_have_count(0)
        expect(download_row).not_to_contain_text("virus_found")

        # Someone else writes the CNF after the page loaded it: the page's
        # next check and apply show the conflict and overwrite nothing.
        page.goto(base + "/cnfs")
        row.get_by_role("button", name="Edit").click()
        expect(box).to_have_value(containing("policy_check: |"))
        box.fill(box.input_value().replace("policy_check: |", "policy_check: |\n      trefoil.log('mine')"))
        theirs = put(base, f"/api/v1/cnfs/{CNF}", change)["metadata"]["resourceVersion"]
        page.get_by_role("button", name="Check", exact=True).click()
        expect(page.locator("#problems")).to_contain_text("Conflict")
        expect(apply_button).to_be_disabled()
        assert api(base, f"/api/v1/cnfs/{CNF}")["metadata"]["resourceVersion"] == theirs, "the conflict overwrote"
        shoot("cnfs-conflict")

        # The form builder: a CNF of two steps, ordered by the arrow buttons
        # (by keyboard), one with a `when` condition; a bad regex is shown
        # on its step and at its line, nothing stored; fixed, it is created.
        page.locator("#b-name").fill("scratch")
        page.locator("#b-function").select_option("inspect")
        page.get_by_role("button", name="Add step").click()
        page.locator("#b-function").select_option("policy")
        page.get_by_role("button", name="Add step").click()
        steps = page.locator("#b-steps li")
        expect(steps).to_have_count(2)
        page.get_by_role("button", name="Move step 2 (policy) up").focus()
        page.keyboard.press("Enter")
        expect(steps.nth(0)).to_have_attribute("data-function", "policy")
        expect(steps.nth(1)).to_have_attribute("data-function", "inspect")
        # Focus follows the moved step, so Enter again moves it back down.
        expect(page.get_by_role("button", name="Move step 1 (policy) down")).to_be_focused()
        steps.nth(1).locator("[data-field=phase]").select_option("response")
        steps.nth(0).locator("[data-field=mode]").select_option("callout")
        steps.nth(0).locator("[data-field=match]").select_option("regex")
        steps.nth(0).locator("[data-field=path]").fill("/upload(")
        steps.nth(0).locator("[data-field=method]").select_option("POST")
        page.get_by_role("button", name="Check the CNF").click()
        step_problem = steps.nth(0).locator(".step-problems .problem")
        expect(step_problem).to_contain_text("spec.chain[0].when")
        regex_line = int(step_problem.first.get_attribute("data-line"))
        expect(page.locator("#gutter .mark").first).to_have_text(str(regex_line))
        assert "regex:" in box.input_value().split("\n")[regex_line - 1], box.input_value()
        expect(apply_button).to_be_disabled()
        shoot("cnfs-builder-error")
        assert all(c["metadata"]["name"] != "scratch" for c in api(base, "/api/v1/cnfs")["items"]), "a bad CNF was stored"
        steps.nth(0).locator("[data-field=path]").fill("/upload")
        page.get_by_role("button", name="Check the CNF").click()
        expect(page.locator("#problems")).to_contain_text("is valid and new")
        expect(page.locator("#diff .add", has_text="name: scratch")).to_be_visible()
        built = box.input_value()
        assert "prefix" not in built and "regex: /upload" in built and "method: POST" in built and "phase: response" in built, built
        shoot("cnfs-builder")
        apply_button.click()
        expect(page.locator("#acks-summary[data-done]")).to_have_attribute("data-done", "acked", timeout=30_000)
        scratch = page.locator("#cnfs tbody tr", has_text="scratch")
        expect(scratch).to_contain_text("policy (callout / request) → inspect (callout / response)")
        stored = api(base, "/api/v1/cnfs/scratch")["spec"]["chain"]
        assert stored[0]["when"] == {"path": {"regex": "/upload"}, "method": "POST"}, stored

        # Deleted through the confirmation: Cancel keeps it, Delete removes it.
        scratch.get_by_role("button", name="Delete").click()
        page.locator("#confirm").get_by_role("button", name="Cancel").click()
        expect(scratch).to_have_count(1)
        scratch.get_by_role("button", name="Delete").click()
        expect(page.locator("#confirm-text")).to_contain_text("scratch")
        page.locator("#confirm").get_by_role("button", name="Delete").click()
        expect(scratch).to_have_count(0)
        expect(page.locator("#problems")).to_contain_text("Deleted CNF scratch")

        # CNF Tracing: the request's trace, filters, the waterfall.
        timed_goto("traces", "/traces", page.locator(f"#traces tr[data-trace='{a.trace_id}']"))
        trace_row = page.locator(f"#traces tr[data-trace='{a.trace_id}']")
        expect(trace_row).to_contain_text(CNF)
        page.locator("#f-path").fill("/admin")
        expect(trace_row).to_be_visible()
        page.locator("#f-path").fill("/no-such-path")
        expect(trace_row).to_have_count(0)
        page.locator("#f-path").fill("")
        page.locator("#f-cnf").select_option(CNF)
        expect(trace_row).to_be_visible()
        trace_row.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#trace-id")).to_have_text(a.trace_id)
        expect(page.locator("#waterfall .span[data-span='chain policy']")).to_be_visible()
        page.locator("#waterfall .span").first.click()
        expect(page.locator("#span-detail")).to_contain_text("trefoil.")
        shoot("traces")
        page.get_by_role("button", name="Stop").click()
        expect(page.get_by_role("button", name="Start")).to_be_visible()
        page.get_by_role("button", name="Clear").click()
        expect(trace_row).to_have_count(0)

        # Resources: every kind; an object's YAML.
        timed_goto("resources", f"/resources#CNF/{CNF}", page.locator("#object-yaml", has_text="inspect_done"))
        page.locator("#kind").select_option("Service")
        expect(page.locator("#objects tbody tr[data-name=policy]")).to_be_visible()
        page.locator("#objects tbody tr[data-name=policy]").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#object-yaml")).to_contain_text("kind: Service")
        shoot("resources")

        # Resources edit: the Route's timeout, with the diff shown and
        # confirmed before it is stored, then each proxy's acknowledgement.
        page.locator("#kind").select_option("Route")
        page.locator("#objects tbody tr[data-name=edge]").click()
        route_before = api(base, "/api/v1/routes/edge")["metadata"]["resourceVersion"]
        page.get_by_role("button", name="Edit Route/edge").click()
        expect(box).to_have_value(containing("name: edge"))
        expect(box).to_have_value(containing(f'resourceVersion: "{route_before}"'))
        box.fill(re.sub(r"timeout: \S+", "timeout: 15s", box.input_value()))
        page.get_by_role("button", name="Check", exact=True).click()
        expect(page.locator("#diff .add", has_text="timeout: \"15s\"")).to_be_visible()
        expect(page.locator("#diff .del", has_text="timeout:")).to_be_visible()
        expect(page.locator("#diff-summary")).to_contain_text("1 line(s) added, 1 removed")
        assert api(base, "/api/v1/routes/edge")["metadata"]["resourceVersion"] == route_before, "stored before the confirmation"
        shoot("resources-diff")
        page.get_by_role("button", name="Confirm and apply").click()
        expect(page.locator("#acks-summary[data-done]")).to_have_attribute("data-done", "acked", timeout=30_000)
        assert api(base, "/api/v1/routes/edge")["spec"]["rules"][0]["timeout"] in ("15s", 15, "15"), api(base, "/api/v1/routes/edge")

        # Rollouts: shop's canary held at 20%; Pause, Resume, then Promote by button.
        for path, text in SHOP:
            put(base, "/api/v1/" + path, text)
        timed_goto("rollouts", "/rollouts", page.locator(".rollout[data-name=shop]"))
        card = page.locator(".rollout[data-name=shop]")
        expect(card).to_have_attribute("data-weight", "20")
        expect(card).to_have_attribute("data-phase", "Progressing")
        expect(card.locator("figure.chart svg path.line")).to_be_visible()
        # Traffic to shop until a check's success rate is charted against its bound.
        done = threading.Event()

        def send_to_shop():
            while not done.is_set():
                through_gateway(a.gateway, "shop.local")

        sender = threading.Thread(target=send_to_shop, daemon=True)
        sender.start()
        expect(card.locator("figure.chart", has_text="successRate").locator("circle.ok-dot").first).to_be_visible()
        done.set()
        sender.join()
        expect(card.locator("figure.chart", has_text="successRate").locator("line.bound")).to_have_count(1)
        card.get_by_role("button", name="Pause").click()
        expect(card).to_have_attribute("data-phase", "Paused")
        expect(card.get_by_role("button", name="Pause")).to_be_disabled()
        card.get_by_role("button", name="Resume").focus()
        page.keyboard.press("Enter")
        expect(card).to_have_attribute("data-phase", "Progressing")
        shoot("rollouts")

        # The graph: the gateway's edges to shop v1 (80%) and v2 (20%), a CNF's chain.
        v2 = page.locator('#graph [data-edge="Gateway/gateway>Service/shop@v2"]')
        timed_goto("graph", "/graph", v2)
        expect(v2).to_have_attribute("data-weight", "20")
        expect(page.locator('#graph [data-edge="Gateway/gateway>Service/shop@v1"]')).to_have_attribute("data-weight", "80")
        cnf = page.locator('#graph [data-node="CNF/edge-security"]')
        expect(cnf).to_contain_text("policy (callout / request)")
        expect(cnf).to_contain_text("inspect (callout / response)")
        expect(page.locator('#graph [data-edge="CNF/edge-security>Service/web"]')).to_be_visible()
        shoot("graph")
        page.locator("#g-search").fill("shop")
        page.keyboard.press("Enter")
        expect(page.locator("#graph-summary")).to_contain_text("focused on Service/shop")
        expect(page.locator('#graph [data-node="CNF/edge-security"]')).to_have_count(0)
        shoot("graph-focus")
        page.get_by_role("button", name="Show all").click()
        expect(cnf).to_be_visible()

        page.goto(base + "/rollouts")
        card.get_by_role("button", name="Promote").click()
        expect(card).to_have_attribute("data-phase", "Succeeded")
        expect(card).to_have_attribute("data-weight", "100")
        expect(card.locator(".weight")).to_have_text("100%")
        expect(card.get_by_role("button", name="Abort")).to_be_disabled()
        # The graph follows the Route: all of shop's traffic to v2.
        page.goto(base + "/graph")
        expect(v2).to_have_attribute("data-weight", "100")
        expect(page.locator('#graph [data-edge="Gateway/gateway>Service/shop@v1"]')).to_have_count(0)
        # A node opens its page, by keyboard too.
        page.locator('#graph [data-node="CNF/edge-security"]').focus()
        page.keyboard.press("Enter")
        page.wait_for_url("**/cnfs#edge-security")

        # A viewer: the same pages, and no edit or action button anywhere.
        viewer = post(base, "/api/v1/login-codes", {"role": "viewer"})["code"]
        seen = browser.new_page(viewport=WIDE)
        seen.set_default_timeout(20_000)
        seen.on("console", console)
        seen.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        seen.goto(base + "/cnfs#login=" + viewer)
        expect(seen.locator("body[data-role=viewer]")).to_have_count(1)
        expect(seen.locator("#cnfs tbody tr", has_text=CNF)).to_be_visible()
        for path, ready in (("/", "#proxies tbody tr"), ("/cnfs", "#cnfs tbody tr"), ("/rollouts", ".rollout[data-name=shop]"), ("/graph", "#graph .node"), ("/resources", "#objects tbody tr")):
            seen.goto(base + path)
            expect(seen.locator("body[data-role=viewer]")).to_have_count(1)
            expect(seen.locator(ready).first).to_be_visible()
            for name in ("Edit", "Delete", "New CNF", "Confirm and apply", "Check", "Check the CNF", "Add step", "Save handlers", "Promote", "Abort", "Pause", "Resume"):
                expect(seen.get_by_role("button", name=name, exact=True)).to_have_count(0)
            assert seen.locator(".edit:visible").count() == 0, f"an edit control is visible to a viewer on {path}"
        seen.close()

        browser.close()

    # The table, for a person (stderr: stdout is the figures' one JSON line),
    # and the same as JSON beside the screenshots.
    load = os.getloadavg()
    conditions = {"loads": LOADS, "cpus": os.cpu_count(), "loadAverage": [round(x, 2) for x in load]}
    lines = [f"time to data, median of {LOADS} loads (load average {load[0]:.2f}, {os.cpu_count()} CPUs):",
             f"{'page':<10} {'data ms':>8} {'DOM ms':>7}  samples"]
    for name, t in timings.items():
        lines.append(f"{name:<10} {t['medianDataMs']:>8} {t['medianDomMs']:>7}  {t['dataMs']}")
    print("\n".join(lines), file=sys.stderr)
    with open(os.path.join(a.screenshots, "timings.json"), "w") as f:
        json.dump({"conditions": conditions, "pages": timings}, f, indent=2)

    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
