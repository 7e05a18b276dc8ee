from fastapi import Depends, FastAPI
from fedgate_agent import CrossingContext, FedgateMiddleware, Gateway, crossing_dependency

gateway = Gateway.from_env()  # FEDGATE_GATEWAY_URL, FEDGATE_CERT + FEDGATE_KEY, FEDGATE_BUNDLES
app = FastAPI()
app.add_middleware(FedgateMiddleware, gateway=gateway)  # no valid crossing link: refused

@app.post("/analytics/{job}")
def run_job(job: str, link: CrossingContext = Depends(crossing_dependency())):
    report = gateway.egress("POST", f"/reports/{job}", "spiffe://company.com/agent/report/r1",
                            ["analytics:report-back"], link.chain, json={"job": job})
    return {**link.to_dict(), "report": report.json()}
