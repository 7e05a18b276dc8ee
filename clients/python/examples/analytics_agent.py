from fastapi import FastAPI, Request
from fedgate_agent import FedgateMiddleware, Gateway, crossing_of

gateway = Gateway.from_env()  # FEDGATE_GATEWAY_URL, FEDGATE_CERT/FEDGATE_KEY (or a Workload API socket), FEDGATE_BUNDLES
app = FastAPI()
app.add_middleware(FedgateMiddleware, bundles=gateway.bundles, svid=gateway.svid)  # no valid crossing link: refused

@app.post("/analytics/{job}")
def run_job(job: str, request: Request):
    link = crossing_of(request)  # holder, scope, task, crossing, foreign_actor, principal (as disclosed)
    report = gateway.egress("POST", f"/reports/{job}", "spiffe://company.com/agent/report/r1", ["analytics:report-back"], link.chain, json={"job": job})
    return {"holder": link.holder, "scope": link.scope.to_strings(), "task": link.task, "principal": link.principal, "report": report.json()}
