"""LipSDP-Neuron on deep ReLU chains, in its chordal (clique-split) form: the reference of the depth grid.

Run:  nice python benchmarks/lipsdp_chain.py --out benchmarks/results/lipsdp_chain.jsonl [--seconds 1500]
      [--only NAME]

Q(rho, T) of math.md section 2 is block-tridiagonal, so its sparsity graph is chordal with cliques
{block k-1, block k}, and (Agler, Griewank-Toint) Q >= 0 iff Q = sum_k E_k^T Z_k E_k with Z_k >= 0
supported on clique k.  Written out for ReLU (Q_kk = 2 T_k, Q_{k,k-1} = -T_k W_k), with free symmetric
X_1..X_{H-1} that split each shared diagonal block::

    [[rho I (k = 1) or X_{k-1},  -W_k^T T_k],
     [-T_k W_k,                  2 T_k - X_k  (k < H) or 2 T_H - W_L^T W_L]]  >= 0,   k = 1..H,

an exact reformulation with H cones of size n_{k-1} + n_k instead of one of size N: Clarabel (interior
point, for width 20) and SCS (for wider nets) solve depth 100 where the dense SDP of lipcert's
``lipsdp-neuron`` (one PSD block of size N) is out of reach.  The net is first rescaled layer by layer
(homogeneity (H)) with the Gamma_k scales of a certificate (``optimized``), so that rho* is about 1 and the
solver tolerance is relative.  Each row (JSON, appended as soon as solved) holds sqrt(rho*) (a solver
value), the certificate of Theorem 1 at the solver's multipliers Lambda_k = T_k / rho (:func:`certify`),
and the multipliers themselves for the diagnosis in docs/decisions.md 36.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from run_info import load_average

import lipcert
from lipcert.bounds.closed_form import rule_chooser
from lipcert.bounds.recursion import LayerContext, run
from lipcert.bounds.rules import Rule
from lipcert.bounds.sdp import SHRINK
from lipcert.errors import InfeasibleCertificateError
from lipcert.random_nets import eclipse_benchmark, gaussian


def nets(seeds: list[int]) -> dict[str, Any]:
    """The depth grid of benchmarks/optimized.py --deep: name -> constructor."""
    out = {f"Gaussian {w} x {d}" + (f" seed {s}" if s else ""): (lambda w=w, d=d, s=s: gaussian([w] * d + [1], seed=s))
           for s in seeds for w in (20, 50) for d in (30, 50, 100)}
    out.update({f"ECLipsE depth {d} (width 80)": (lambda d=d: eclipse_benchmark(d)) for d in (30, 50, 100)})
    return out


def log_scales(net: lipcert.Network, certificate: lipcert.LipschitzBound) -> list[float]:
    """log C_k, C_k = 1 / lambda_max(true Gamma_k) along the certificate's own trajectory; C_L = 1 / bound^2.

    The trajectory is that of ``certificate.extras["chooser"]`` when the optimizer left one (a rebuild in its
    stable parameterization), else a replay of the stored multipliers.
    """
    logs: list[float] = []
    slopes = [(torch.zeros_like(a), b) for a, b in net.slopes()]
    rebuild = certificate.extras.get("chooser")

    def record(ctx: LayerContext):
        logs.append(-(ctx.log_scale + math.log(float(torch.linalg.eigvalsh(ctx.gamma)[-1]))))
        yield from rebuild(ctx)

    if rebuild is not None:
        run(list(net.weights), slopes, record)
    else:
        lam = [m.double() for m in certificate.multipliers]
        replay_logs: list[float] = []

        def rec(ctx: LayerContext):
            replay_logs.append(-(ctx.log_scale + math.log(float(torch.linalg.eigvalsh(ctx.gamma)[-1]))))
            m = lam[ctx.index - 1].to(ctx.gamma)
            yield "replay", torch.exp(torch.log(m[m > 0]) + ctx.log_scale)
            yield "sn(1)", torch.ones_like(ctx.gamma[0]) / float(torch.linalg.eigvalsh(ctx.gamma)[-1] * 1.000001)
        run(list(net.weights), slopes, rec)
        logs = replay_logs
    return logs + [-2 * math.log(certificate.value)]


def chain_problem(ws: list[np.ndarray]) -> tuple[Any, Any, list[Any]]:
    """min rho s.t. the H clique LMIs above (ReLU slopes); returns (problem, rho, [t_k])."""
    import cvxpy as cp

    hidden = len(ws) - 1
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(w.shape[0], nonneg=True) for w in ws[:-1]]
    xs = [cp.Variable((w.shape[0], w.shape[0]), symmetric=True) for w in ws[:-2]]
    cons = []
    for k in range(hidden):
        w, t = ws[k], ts[k]
        top = rho * np.eye(w.shape[1]) if k == 0 else xs[k - 1]
        bottom = 2 * cp.diag(t) - (xs[k] if k < hidden - 1 else ws[-1].T @ ws[-1])
        off = -cp.diag(t) @ w
        block = cp.bmat([[top, off.T], [off, bottom]])
        cons.append((block + block.T) / 2 >> 0)
    return cp.Problem(cp.Minimize(rho), cons), rho, ts


def solve(net: lipcert.Network, certificate: lipcert.LipschitzBound, solver: str, eps: float, seconds: float
          ) -> dict[str, Any]:
    """sqrt(rho*) of the chain SDP on the rescaled net, the certificate at its multipliers, and timings."""
    import cvxpy as cp

    logs = log_scales(net, certificate)
    prev, ws = 0.0, []
    for w, lc in zip(net.weights, logs):
        ws.append(w.numpy() * math.exp((lc - prev) / 2))
        prev = lc
    if ws[0].shape[1] > ws[0].shape[0]:  # exact input reduction W_1 = U S V^T -> U S
        u, sig, _ = np.linalg.svd(ws[0], full_matrices=False)
        ws[0] = u * sig[None, :]
    problem, rho, ts = chain_problem(ws)
    opts: dict[str, Any] = ({"eps_abs": eps, "eps_rel": eps, "max_iters": 10**7, "time_limit_secs": seconds}
                            if solver == "SCS" else
                            {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps, "time_limit": seconds})
    start = time.perf_counter()
    try:
        problem.solve(solver=getattr(cp, solver), **opts)
        status = str(problem.status)
    except cp.error.SolverError as exc:
        status = f"error: {exc}"
    elapsed = time.perf_counter() - start
    row: dict[str, Any] = {"solver": solver, "eps": eps, "status": status, "seconds": elapsed,
                           "time_limit": seconds, "load": load_average()}
    if rho.value is None or not float(rho.value) > 0:
        return row
    rho_v = float(rho.value)
    row["sqrt_rho"] = math.sqrt(rho_v * math.exp(-logs[-1]))
    lams = [torch.from_numpy(np.maximum(np.asarray(t.value, dtype=np.float64), 0) / rho_v * math.exp(lc))
            for t, lc in zip(ts, logs)]
    row["multipliers"] = [lam.tolist() for lam in lams]
    row["certificate"], row["fallback_layers"] = certify(net, lams)
    return row


def certify(net: lipcert.Network, lams: list[torch.Tensor]) -> tuple[float | None, list[int]]:
    """Theorem 1 at the solver's multipliers, each shrunk by sdp.SHRINK until its Cholesky passes, SN(1) where
    none does (math.md 12.3); returns the value and the layers that fell back."""
    fallback: list[int] = []

    def choose(ctx: LayerContext):
        lam = lams[ctx.index - 1].to(ctx.gamma)
        lam = torch.exp(torch.log(lam.clamp(min=1e-300)) + ctx.log_scale)
        for t in (1.0,) + SHRINK:
            yield "sdp", lam * t
        fallback.append(ctx.index)
        yield from rule_chooser(Rule("sn", 1.0))(ctx)

    try:
        value = run(list(net.weights), [(torch.zeros_like(a), b) for a, b in net.slopes()], choose).value
    except InfeasibleCertificateError:
        return None, fallback
    return value, fallback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=1500.0, help="time limit of each solve")
    parser.add_argument("--eps", type=float, default=1e-7)
    parser.add_argument("--only", action="append", metavar="NAME")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the Gaussian nets")
    parser.add_argument("--iterations", type=int, default=None, help="optimized's budget for the scaling")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, make in nets(args.seeds).items():
        if args.only and not any(part in name for part in args.only):
            continue
        net = make()
        opts: dict[str, Any] = {"progress": False}
        if args.iterations is not None:
            opts["iterations"] = args.iterations
        cert = lipcert.lipschitz(net, "optimized", options=opts)
        solver = "CLARABEL" if max(net.widths[1:-1]) <= 20 else "SCS"
        print(name, solver, f"scaling certificate {cert.value:.6g}", flush=True)
        row = {"net": name, "scaling_certificate": cert.value, **solve(net, cert, solver, args.eps, args.seconds)}
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print({k: v for k, v in row.items() if k != "multipliers"}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
