#!/usr/bin/env bash
# Two replicas of vendor.example's gateway behind one TCP load balancer, sharing PostgreSQL, and
# one company.com gateway, all on this machine; then the checks of the scale-out mode:
#
#   1. a token used at replica 1 is refused as `replayed` at replica 2;
#   2. 50 concurrent uses of one token over both replicas: exactly one allowed;
#   3. a revocation made at replica 1 is enforced by replica 2 (time measured);
#   4. PostgreSQL stopped under load: every crossing refused (`state_unavailable`), nothing
#      reaches the upstream; restarted: crossings succeed again without restarting a gateway;
#   5. replica 1 killed with SIGKILL under load: the survivor keeps serving, every acknowledged
#      crossing is in the union of the replicas' logs, and the two domains reconcile clean.
#
# PostgreSQL is Debian's package (installed with apt-get if missing), run as an unprivileged
# cluster in a temp dir. Usage: scripts/replicas.sh   (FEDGATE_BIN=path to skip the build;
# KEEP=DIR keeps everything). Exits non-zero if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${FEDGATE_BIN:-}" ]; then FG=$FEDGATE_BIN; else
  echo "building fedgate (release)..." >&2
  cargo build --release --quiet
  FG=$PWD/target/release/fedgate
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  echo "installing postgresql (Debian package)..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

T=$(mktemp -d)
chmod 755 "$T"
PIDS=()
AS_PG=()
[ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$T/pg" -m immediate stop >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -a "$T"/. "$KEEP"/; fi
  rm -rf "$T"
}
trap cleanup EXIT

# Free loopback ports below the ephemeral range (replica 1 comes back on its own).
read -r P_PG P_UP P_CI P_CF P_CA P_LB P_1I P_1F P_1A P_2I P_2F P_2A < <(python3 - <<'PY'
import random, socket
ports = []
while len(ports) < 12:
    p = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, ports)))
PY
)

echo "== PostgreSQL on 127.0.0.1:$P_PG"
mkdir -p "$T/pg" "$T/pgrun"
[ "$(id -u)" = 0 ] && chown postgres "$T/pg" "$T/pgrun"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$T/pg" -U fedgate --auth=trust --no-sync >/dev/null
cat >> "$T/pg/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $P_PG
unix_socket_directories = '$T/pgrun'
max_connections = 200
EOF
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$T/pg" -l "$T/pgrun/pg.log" -w start >/dev/null
"${AS_PG[@]}" "$PGBIN/createdb" -h 127.0.0.1 -p "$P_PG" -U fedgate fedgate
PGURL="postgres://fedgate@127.0.0.1:$P_PG/fedgate"

echo "== two domains, one agreement"
$FG init --trust-domain company.com --out "$T/co" --internal 127.0.0.1:$P_CI --federation 127.0.0.1:$P_CF --admin 127.0.0.1:$P_CA --agent planning/p1 >/dev/null
$FG init --trust-domain vendor.example --out "$T/r1" --internal 127.0.0.1:$P_1I --federation 127.0.0.1:$P_1F --admin 127.0.0.1:$P_1A --agent analytics/a1 --agent analytics/a2 >/dev/null
cp "$T/co/bundles/company.com.json" "$T/r1/bundles/"
cp "$T/r1/bundles/vendor.example.json" "$T/co/bundles/"
FROM=$(date -u -d '-1 day' +%Y-%m-%dT%H:%M:%SZ)
UNTIL=$(date -u -d '+1 year' +%Y-%m-%dT%H:%M:%SZ)
cat > "$T/agreement.toml" <<EOF
id = "replicas"
version = 1
valid_from = $FROM
valid_until = $UNTIL
max_chain_depth = 5
max_token_ttl = "15m"
clock_skew = "30s"

[[domains]]
trust_domain = "company.com"
gateway_id = "spiffe://company.com/gateway"
gateway_url = "https://127.0.0.1:$P_CF"
bundle_endpoint = "https://127.0.0.1:$P_CF/bundle"
disclosure = { principal = "pseudonymous", chain = "digest" }

[[domains]]
trust_domain = "vendor.example"
gateway_id = "spiffe://vendor.example/gateway"
gateway_url = "https://127.0.0.1:$P_LB"
bundle_endpoint = "https://127.0.0.1:$P_LB/bundle"
disclosure = { principal = "none", chain = "digest" }

[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/analytics/*"
max_scope = ["analytics:*"]

[[flows.routes]]
method = "POST"
path = "/analytics/*"
scope = "analytics:*"
EOF
for d in co r1; do cp "$T/agreement.toml" "$T/$d/agreements/replicas.toml"; done
$FG agreement sign --agreement "$T/co/agreements/replicas.toml" --key "$T/co/keys/gateway.key" --trust-domain company.com >/dev/null
$FG agreement sign --agreement "$T/co/agreements/replicas.toml" --key "$T/r1/keys/gateway.key" --trust-domain vendor.example >/dev/null
cp "$T"/co/agreements/replicas.*.sig "$T/r1/agreements/"

# Replica 2: the same domain (keys, SVID, bundles, agreement), its own data dir and listeners.
cp -a "$T/r1" "$T/r2"
python3 - "$T" "$PGURL" "$P_UP" "$P_2I" "$P_2F" "$P_2A" <<'PY'
import sys, re
t, url, up, i2, f2, a2 = sys.argv[1:]
for name, ports in (("r1", None), ("r2", (i2, f2, a2))):
    p = f"{t}/{name}/gateway.toml"
    s = open(p).read()
    if ports:
        s = re.sub(r'internal = "127.0.0.1:\d+"', f'internal = "127.0.0.1:{ports[0]}"', s)
        s = re.sub(r'federation = "127.0.0.1:\d+"', f'federation = "127.0.0.1:{ports[1]}"', s)
        s = re.sub(r'admin = "127.0.0.1:\d+"', f'admin = "127.0.0.1:{ports[2]}"', s)
    s = s.replace("upstreams = []\n", "")
    s = re.sub(r'\[state\]\nbackend = "sled"\n', "", s)
    s += f'\n[[upstreams]]\ntarget = "spiffe://vendor.example/agent/analytics/*"\nurl = "http://127.0.0.1:{up}"\n'
    s += f'\n[state]\nbackend = "postgres"\nurl = "{url}"\nreplica = "{name}"\n'
    open(p, "w").write(s)
PY

# The upstream (counts what reaches it) and the TCP balancer (round robin, skips a dead replica).
cat > "$T/helpers.py" <<'PY'
import asyncio, http.server, itertools, sys, threading
def upstream(port, log):
    class H(http.server.BaseHTTPRequestHandler):
        def handle_one(self):
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)
            open(log, "a").write(self.path + "\n")
            body = b'{"status":"done"}'
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        do_GET = do_POST = handle_one
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
async def balancer(port, backends):
    rr = itertools.cycle(range(len(backends)))
    async def pipe(r, w):
        try:
            while (b := await r.read(65536)):
                w.write(b); await w.drain()
        except Exception:
            pass
        finally:
            w.close()
    async def serve(r, w):
        start = next(rr)
        for i in range(len(backends)):
            try:
                br, bw = await asyncio.open_connection("127.0.0.1", backends[(start + i) % len(backends)])
            except OSError:
                continue
            await asyncio.gather(pipe(r, bw), pipe(br, w))
            return
        w.close()
    s = await asyncio.start_server(serve, "127.0.0.1", port)
    await s.serve_forever()
if sys.argv[1] == "upstream":
    upstream(int(sys.argv[2]), sys.argv[3])
else:
    asyncio.run(balancer(int(sys.argv[2]), [int(p) for p in sys.argv[3:]]))
PY
python3 "$T/helpers.py" upstream "$P_UP" "$T/upstream.log" >/dev/null 2>&1 & PIDS+=($!)
python3 "$T/helpers.py" balancer "$P_LB" "$P_1F" "$P_2F" >/dev/null 2>&1 & PIDS+=($!)
touch "$T/upstream.log"

serve() { # dir -> pid
  FEDGATE_LOG=${FEDGATE_LOG:-warn} "$FG" serve --config "$T/$1/gateway.toml" >/dev/null 2>>"$T/$1.log" &
  echo $!
}
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; return 1
}
echo "== gateways: company.com, vendor.example r1 and r2 (behind 127.0.0.1:$P_LB)"
CO_PID=$(serve co); PIDS+=("$CO_PID")
R1_PID=$(serve r1); PIDS+=("$R1_PID")
R2_PID=$(serve r2); PIDS+=("$R2_PID")
wait_port "$P_CI"; wait_port "$P_1F"; wait_port "$P_2F"
CHAIN=$($FG chain issue --dir "$T/co" --human alice@company.com --to spiffe://company.com/agent/planning/p1 --scope "analytics:*" --task replicas --ttl 2h)
echo "$CHAIN" > "$T/chain.txt"

# The checks, over real mTLS with the agents' SVIDs.
cat > "$T/checks.py" <<'PY'
import base64, concurrent.futures as cf, http.client, json, os, ssl, subprocess, sys, threading, time, urllib.parse
T = os.environ["T"]; FG = os.environ["FG"]; P = {k: int(os.environ[k]) for k in os.environ if k.startswith("P_")}
CHAIN = open(f"{T}/chain.txt").read().strip()
def ctx(domain_dir, agent, ca_dir):
    c = ssl.create_default_context(cafile=f"{T}/{ca_dir}/ca.pem")
    c.load_cert_chain(f"{T}/{domain_dir}/agents/{agent}.pem", f"{T}/{domain_dir}/agents/{agent}.key")
    return c
PLAN_CO = ctx("co", "planning/p1", "co")       # planning -> its own gateway
PLAN_VE = ctx("co", "planning/p1", "r1")       # planning -> vendor replicas (direct, cnf)
def req(port, method, path, c, headers=None, body=b""):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=c, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse(); data = r.read()
        return r.status, dict(r.getheaders()), data
    finally:
        conn.close()
def reason(data):
    try: return json.loads(data).get("reason")
    except Exception: return None
def exchange(audience):
    form = urllib.parse.urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": CHAIN, "subject_token_type": "urn:fedgate:token-type:delegation-chain",
        "audience": audience, "scope": "analytics:run"})
    s, _, d = req(P["P_CI"], "POST", "/v1/token", PLAN_CO, {"Content-Type": "application/x-www-form-urlencoded"}, form.encode())
    assert s == 200, d
    return json.loads(d)["access_token"]
def direct(port, token):
    return req(port, "POST", "/ingress/analytics/run", PLAN_VE, {"Authorization": f"Bearer {token}"}, b"{}")
def egress():
    return req(P["P_CI"], "POST", "/egress/analytics/run", PLAN_CO, {"Delegation-Chain": CHAIN,
        "Fedgate-Target": "spiffe://vendor.example/agent/analytics/a1", "Fedgate-Scope": "analytics:run"}, b"{}")
def receipt_crossing(h):
    r = {k.lower(): v for k, v in h.items()}.get("fedgate-receipt")
    if not r: return None
    p = r.split(".")[1]; p += "=" * (-len(p) % 4)
    return json.loads(base64.urlsafe_b64decode(p))["crossing"]
def upstream_hits():
    return sum(1 for _ in open(f"{T}/upstream.log"))
fails = []
def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f"  ({detail})" if detail else ""), flush=True)
    if not ok: fails.append(name)
A1 = "spiffe://vendor.example/agent/analytics/a1"; A2 = "spiffe://vendor.example/agent/analytics/a2"

step = sys.argv[1]
if step == "before-kill":
    t = exchange(A1)
    s1, _, _ = direct(P["P_1F"], t); s2, _, d2 = direct(P["P_2F"], t)
    check("1. a token used at replica 1 is replayed at replica 2", s1 == 200 and reason(d2) == "replayed", f"{s1}, {s2} {reason(d2)}")
    t = exchange(A1)
    with cf.ThreadPoolExecutor(25) as ex:
        res = list(ex.map(lambda i: direct(P["P_1F"] if i % 2 else P["P_2F"], t), range(50)))
    oks = sum(1 for s, _, _ in res if s == 200); rep = sum(1 for s, _, d in res if reason(d) == "replayed")
    check("2. 50 concurrent uses of one token: exactly one allowed", oks == 1 and rep == 49, f"{oks} allowed, {rep} replayed")
    t0 = time.monotonic()
    subprocess.run([FG, "revoke", "--admin-url", f"https://127.0.0.1:{P['P_1A']}", "--agent", A2, "--dir", f"{T}/r1"], check=True, capture_output=True)
    took = None
    while time.monotonic() - t0 < 5:
        s, _, d = direct(P["P_2F"], exchange(A2))
        if reason(d) == "revoked":
            took = time.monotonic() - t0; break
        time.sleep(0.05)
    check("3. a revocation at replica 1 is enforced by replica 2", took is not None and took < 1.5, f"{took and round(took*1000)} ms from the revoke command, token exchanges included")
    # 4. PostgreSQL stopped under load.
    hits = upstream_hits()
    subprocess.run(os.environ["PG_STOP"], shell=True, check=True, capture_output=True)
    during = [egress()[0] for _ in range(20)]
    check("4a. PostgreSQL down: every crossing refused, nothing forwarded", all(s != 200 for s in during) and upstream_hits() == hits, f"statuses {sorted(set(during))}")
    subprocess.run(os.environ["PG_START"], shell=True, check=True, capture_output=True)
    t0 = time.monotonic(); back = None
    while time.monotonic() - t0 < 15:
        if egress()[0] == 200: back = time.monotonic() - t0; break
        time.sleep(0.2)
    check("4b. PostgreSQL back: crossings succeed without a gateway restart", back is not None, f"after {back and round(back, 1)} s")
elif step == "load":
    stop = threading.Event(); acked = []; after = [0]; killed = threading.Event()
    def worker():
        while not stop.is_set():
            try: s, h, _ = egress()
            except Exception: continue
            c = receipt_crossing(h) if s == 200 else None
            if c:
                acked.append(c)
                if killed.is_set(): after[0] += 1
    ths = [threading.Thread(target=worker) for _ in range(6)]
    for th in ths: th.start()
    time.sleep(2)
    subprocess.run(["kill", "-KILL", os.environ["R1_PID"]], check=True)
    killed.set(); time.sleep(2.5); stop.set()
    for th in ths: th.join()
    json.dump(acked, open(f"{T}/acked.json", "w"))
    check("5a. replica 1 killed under load: the survivor keeps serving", after[0] > 0, f"{len(acked)} acknowledged, {after[0]} after the kill")
elif step == "after-kill":
    acked = json.load(open(f"{T}/acked.json")); allowed = set()
    for r in ("r1", "r2"):
        for line in open(f"{T}/{r}.jsonl"):
            x = json.loads(line)
            if x["kind"] == "decision" and x["direction"] == "inbound" and x["decision"] == "allow": allowed.add(x["crossing"])
    missing = [c for c in acked if c not in allowed]
    check("5b. no acknowledged crossing is missing from the union of the replicas' logs", not missing, f"{len(acked)} acknowledged, {len(missing)} missing")
    r = subprocess.run([FG, "audit", "reconcile", "--bundles", f"{T}/co/bundles", f"{T}/co.jsonl", f"{T}/r1.jsonl", f"{T}/r2.jsonl", "--json"], capture_output=True)
    rep = json.loads(r.stdout)
    check("5c. company.com reconciles clean against both replicas' logs", r.returncode == 0 and rep["clean"], json.dumps(rep["summary"]))
sys.exit(1 if fails else 0)
PY
export T FG P_CI P_CF P_1F P_2F P_1A P_2A P_LB
export PG_STOP="${AS_PG[*]} $PGBIN/pg_ctl -D $T/pg -m fast -w stop"
export PG_START="${AS_PG[*]} $PGBIN/pg_ctl -D $T/pg -l $T/pgrun/pg.log -w start"
rc=0
echo "== checks"
python3 "$T/checks.py" before-kill || rc=1
R1_PID=$R1_PID python3 "$T/checks.py" load || rc=1
# Replica 1 comes back (recovering its log); then everything stops cleanly and is exported.
R1_PID=$(serve r1); PIDS+=("$R1_PID"); wait_port "$P_1F"; sleep 0.5
for p in "$R1_PID" "$R2_PID" "$CO_PID"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "$R1_PID" "$R2_PID" "$CO_PID"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
for d in co r1 r2; do $FG audit export --data-dir "$T/$d/data" --out "$T/$d.jsonl" >/dev/null; done
python3 "$T/checks.py" after-kill || rc=1
[ "$rc" = 0 ] && echo "all checks passed" || echo "SOME CHECKS FAILED"
exit $rc
