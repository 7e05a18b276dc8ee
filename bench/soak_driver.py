"""The soak's helpers (bench/soak.sh): `setup` writes the agreement and adjusts the configs,
`upstream` is vendor.example's analytics agent, `run` drives the mixed traffic and samples the
gateways every minute. Standard library only."""

import http.client
import http.server
import json
import os
import random
import re
import ssl
import subprocess
import sys
import threading
import time

ANALYTICS = "spiffe://vendor.example/agent/analytics/a1"


def setup(t, p_up, p_cf, p_vf):
    with open(f"{t}/ve/gateway.toml") as f:
        ve = f.read().replace("upstreams = []\n", "")
    ve += (f'\n[[upstreams]]\ntarget = "spiffe://vendor.example/agent/analytics/*"\n'
           f'url = "http://127.0.0.1:{p_up}"\n')
    with open(f"{t}/ve/gateway.toml", "w") as f:
        f.write(ve)
    # The soak is one busy source whose denials are intended: its denial budget is not what is
    # tested. A short pre-publication delay lets the rotation activate early in the run.
    for d in ("co", "ve"):
        p = f"{t}/{d}/gateway.toml"
        s = open(p).read()
        s = re.sub(r"denials_per_second = \d+", "denials_per_second = 100000", s)
        s = re.sub(r"denial_burst = \d+", "denial_burst = 100000", s)
        s = re.sub(r'key_prepublish = "[^"]*"', 'key_prepublish = "10s"', s)
        open(p, "w").write(s)
    now = time.time()
    fmt = lambda x: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(x))
    text = f"""id = "soak"
version = 1
valid_from = {fmt(now - 86400)}
valid_until = {fmt(now + 365 * 86400)}
max_chain_depth = 5
max_token_ttl = "15m"
clock_skew = "30s"

[[domains]]
trust_domain = "company.com"
gateway_id = "spiffe://company.com/gateway"
gateway_url = "https://127.0.0.1:{p_cf}"
bundle_endpoint = "https://127.0.0.1:{p_cf}/bundle"
disclosure = {{ principal = "pseudonymous", chain = "digest" }}

[[domains]]
trust_domain = "vendor.example"
gateway_id = "spiffe://vendor.example/gateway"
gateway_url = "https://127.0.0.1:{p_vf}"
bundle_endpoint = "https://127.0.0.1:{p_vf}/bundle"
disclosure = {{ principal = "none", chain = "digest" }}

[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/analytics/*"
max_scope = ["analytics:*"]

[[flows.routes]]
method = "POST"
path = "/analytics/*"
scope = "analytics:*"
"""
    with open(f"{t}/agreement.toml", "w") as f:
        f.write(text)


def upstream(port):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            b = b'{"status":"done"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def log_message(self, *a):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H).serve_forever()


def run(t, fg, minutes, co, ve, p_ci, p_vf, p_ca, p_va):
    minutes, co, ve = float(minutes), int(co), int(ve)

    def ctx(cert, key, ca):
        c = ssl.create_default_context(cafile=ca)
        c.load_cert_chain(cert, key)
        return c

    agent = (f"{t}/co/agents/planning/p1.pem", f"{t}/co/agents/planning/p1.key")
    co_agent = ctx(*agent, f"{t}/co/ca.pem")
    ve_agent = ctx(*agent, f"{t}/ve/ca.pem")
    co_admin = ctx(f"{t}/co/admin.pem", f"{t}/co/keys/admin.key", f"{t}/co/ca.pem")
    ve_admin = ctx(f"{t}/ve/admin.pem", f"{t}/ve/keys/admin.key", f"{t}/ve/ca.pem")
    chains = [open(f"{t}/chain-{i}.txt").read().strip() for i in range(64)]
    lock = threading.Lock()
    counts = {}
    unexpected = []
    revoked = set()

    def note(kind, ok, detail):
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
            if not ok:
                unexpected.append(f"{kind}: {detail}")

    def req(port, c, method, path, headers=None, body=b""):
        conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=c, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            try:
                reason = json.loads(data).get("reason", "")
            except ValueError:
                reason = ""
            return r.status, reason, data
        finally:
            conn.close()

    def egress(chain, scope):
        return req(p_ci, co_agent, "POST", "/egress/analytics/run", {
            "Delegation-Chain": chain, "Fedgate-Target": ANALYTICS, "Fedgate-Scope": scope,
            "Content-Type": "application/json"}, b"{}")

    picked = threading.local()

    def live_chain():
        with lock:
            live = [i for i in range(64) if i not in revoked]
        picked.i = random.choice(live)
        return chains[picked.i]

    def raced(why):
        # The chain's task was revoked by another worker while this one used it: intended.
        with lock:
            return why == "revoked" and picked.i in revoked

    def step():
        r = random.random()
        try:
            if r < 0.70:
                s, why, _ = egress(live_chain(), "analytics:run")
                note("allowed crossing", s == 200 or raced(why), f"{s} {why}")
            elif r < 0.82:
                s, why, _ = egress(live_chain(), "admin:everything")
                # Beyond what the human granted the chain: refused before anything crosses.
                note("denied (scope)", s == 403 and why in ("scope_escalation", "revoked") and
                     (why != "revoked" or raced(why)), f"{s} {why}")
            elif r < 0.97:
                form = ("grant_type=urn:ietf:params:oauth:grant-type:token-exchange"
                        "&subject_token_type=urn:fedgate:token-type:delegation-chain"
                        f"&subject_token={live_chain()}&audience={ANALYTICS}&scope=analytics:run")
                s, why, data = req(p_ci, co_agent, "POST", "/v1/token",
                                   {"Content-Type": "application/x-www-form-urlencoded"},
                                   form.encode())
                if s != 200:
                    note("token exchange", raced(why), f"{s} {why}")
                    return
                note("token exchange", True, "")
                tok = json.loads(data)["access_token"]
                h = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
                s1, w1, _ = req(p_vf, ve_agent, "POST", "/ingress/analytics/run", h, b"{}")
                s2, w2, _ = req(p_vf, ve_agent, "POST", "/ingress/analytics/run", h, b"{}")
                note("token used", s1 == 200 or raced(w1), f"{s1} {w1}")
                note("token replayed", w2 == "replayed" or raced(w2), f"{s2} {w2}")
            else:
                with lock:
                    free = [x for x in range(64) if x not in revoked]
                    if len(free) <= 16:
                        return
                    i = random.choice(free)
                    revoked.add(i)
                s, why, _ = req(p_ca, co_admin, "POST", "/v1/revoke",
                                {"Content-Type": "application/json"},
                                json.dumps({"kind": "task", "value": f"soak-{i}"}).encode())
                note("revocation", s == 200, f"{s} {why}")
                s, why, _ = egress(chains[i], "analytics:run")
                note("revoked chain refused", s == 403 and why == "revoked", f"{s} {why}")
        except Exception as e:  # noqa: BLE001 - a connection error is an unintended answer too
            note("error", False, repr(e))

    stop = time.time() + minutes * 60

    def worker():
        while time.time() < stop:
            step()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for th in threads:
        th.start()

    def sample(pid):
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = os.listdir(f"/proc/{pid}/fd")
        socks = 0
        for x in fds:
            try:
                socks += os.readlink(f"/proc/{pid}/fd/{x}").startswith("socket:")
            except OSError:
                pass
        return rss, len(fds), socks

    samples = []
    start = time.time()
    # One rotation: a second is refused while the first waits to retire its old key (for the
    # longest token TTL, and for as long as an agreement carries the old key's signature).
    rotations = [minutes * 60 / 3]
    next_reload = 120
    print(f"{'min':>4} {'co RSS MiB':>10} {'co fds':>7} {'co socks':>8} "
          f"{'ve RSS MiB':>10} {'ve fds':>7} {'ve socks':>8} {'answers':>9} {'unintended':>10}",
          flush=True)
    m = 0
    while time.time() < stop:
        time.sleep(1)
        el = time.time() - start
        if rotations and el >= rotations[0]:
            rotations.pop(0)
            out = subprocess.run([fg, "rotate", "--data-dir", f"{t}/co/data"],
                                 capture_output=True, text=True)
            note("key rotation staged", out.returncode == 0, out.stderr.strip())
        if el >= next_reload:
            next_reload += 120
            for port, c in ((p_ca, co_admin), (p_va, ve_admin)):
                s, why, _ = req(port, c, "POST", "/v1/reload")
                note("reload", s == 200, f"{s} {why}")
        if el >= (m + 1) * 60:
            m += 1
            a, b = sample(co), sample(ve)
            samples.append((a, b))
            with lock:
                total, bad = sum(counts.values()), len(unexpected)
            print(f"{m:>4} {a[0] / 1024:>10.1f} {a[1]:>7} {a[2]:>8} {b[0] / 1024:>10.1f} "
                  f"{b[1]:>7} {b[2]:>8} {total:>9} {bad:>10}", flush=True)
    for th in threads:
        th.join()
    print("answers:", json.dumps(counts, sort_keys=True))
    fail = False
    if unexpected:
        fail = True
        print(f"{len(unexpected)} unintended answers, the first: {unexpected[:5]}")
    n = len(samples)
    if n >= 3:
        third = n // 3
        for side, name in ((0, "company.com"), (1, "vendor.example")):
            for k, what, slack in ((0, "RSS KiB", 8192), (1, "fds", 16), (2, "sockets", 16)):
                mid = [s[side][k] for s in samples[third:2 * third]]
                last = [s[side][k] for s in samples[2 * third:]]
                a, b = sum(mid) / len(mid), sum(last) / len(last)
                grew = b > a * 1.10 and b - a > slack
                print(f"{name} {what}: middle third {a:.0f}, last third {b:.0f}"
                      f"{'  GROWING' if grew else ''}")
                fail |= grew
    print("result:", "FAIL" if fail else "ok")
    sys.exit(1 if fail else 0)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"setup": setup, "upstream": upstream, "run": run}[cmd](*args)
