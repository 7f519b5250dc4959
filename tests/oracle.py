"""The encouraging loss written once more, independently, as the tests' yardstick: numpy float64, row by
row, straight from the formulas of the method (docs: "With label smoothing" and its gradient), with no
code of the package under test. Only the option field names are shared with it.

Per scored token, vocabulary V, CE smoothing eps, bonus smoothing eps_b, weight rho:

    L = CE_ls + rho * [(1 - eps_b) b(p_y) + eps_b / V * sum_j b(p_j)]
    CE_ls = (1 - eps - eps_i) (-log p_y) + eps_i sum_j (-log p_j),  eps_i = eps / (V - 1)  (fairseq >= 0.12)
    dL/dz_k = (p_k - q_k) + rho (w_k g_k - p_k S),  g = p b'(p),  S = sum_j w_j g_j,
    q_y = 1 - eps, q_j = eps_i,  w_y = 1 - eps_b + eps_b / V, w_j = eps_b / V.

Bonuses: log(1 - p) up to LE then its tangent; -p^gamma; cos(pi p) - 1; with a start s, b(p) - b(s) for
p >= s and 0 below. LE = 1 (the plain bonus) is taken as LE = 1 - 2^-24, as the package documents, so
that b stays finite where p rounds to 1 in float32.
"""
import math

import numpy as np

PLAIN_BONUS_LOG_END = 1.0 - 2.0**-24


def option_values(options):
    """The option fields as plain numbers (defaults of the method where a field is not given)."""
    get = options.get
    eps = get("label_smoothing", 0.0)
    eps_b = get("el_label_smoothing")
    return dict(eps=eps, eps_b=eps if eps_b is None else eps_b, rho=get("bonus_rho", 1.0), kind=get("bonus", "log"),
                log_end=min(get("log_end", 0.5), PLAIN_BONUS_LOG_END), gamma=get("bonus_gamma", 1.0),
                start=get("bonus_start", 0.0))


def _raw_bonus(p, one_minus_p, o):
    """b(p) and p b'(p), elementwise, from p and an accurate 1 - p."""
    if o["kind"] == "log":
        le = o["log_end"]
        below = p <= le
        # the tangent log(1 - LE) - (p - LE) / (1 - LE), written with 1 - p (known to full relative
        # precision near p = 1, where p - LE would cancel)
        with np.errstate(divide="ignore"):
            value = np.where(below, np.log(np.where(below, one_minus_p, 1.0)),
                             math.log1p(-le) - 1.0 + one_minus_p / (1.0 - le))
        slope = -p / np.where(below, one_minus_p, 1.0 - le)
        return value, slope
    if o["kind"] == "power":
        power = np.power(p, o["gamma"])
        return -power, -o["gamma"] * power
    return np.cos(math.pi * p) - 1.0, -math.pi * p * np.sin(math.pi * p)


def bonus_and_slope(p, one_minus_p, o):
    value, slope = _raw_bonus(p, one_minus_p, o)
    if o["start"] > 0.0:
        start = np.array([o["start"]])
        offset, _ = _raw_bonus(start, 1.0 - start, o)
        on = p >= o["start"]
        value, slope = np.where(on, value - offset[0], 0.0), np.where(on, slope, 0.0)
    return value, slope


def row(z, y, options):
    """(loss, nll, ce, bonus, gradient over z, p_y, margin) of one scored row of float64 logits."""
    o = option_values(options)
    vocab = z.size
    m = z.max()
    e = np.exp(z - m)
    total = e.sum()
    p = e / total
    # 1 - p_j as the mass of the other classes: exact even where p_j rounds to 1 (only the row's
    # largest p can exceed 1/2, so only its complement needs the separate sum)
    one_minus_p = (total - e) / total
    top = int(np.argmax(e))
    one_minus_p[top] = np.delete(e, top).sum() / total
    with np.errstate(divide="ignore"):
        log_p = (z - m) - math.log(total)
    eps_i = o["eps"] / (vocab - 1) if vocab > 1 else 0.0
    nll = -log_p[y]
    ce = (1.0 - o["eps"] - eps_i) * nll
    if eps_i:
        ce = ce - eps_i * log_p.sum()
    b, g = bonus_and_slope(p, one_minus_p, o)
    w = np.full(vocab, o["eps_b"] / vocab)
    w[y] += 1.0 - o["eps_b"]
    bonus = float((w * b).sum())
    q = np.full(vocab, eps_i)
    q[y] = 1.0 - o["eps"]
    # w_k g_k - p_k S as w_k g_k (1 - p_k) - p_k (S - w_k g_k): near p_k = 1 the slope g_k reaches
    # 2^24 at LE = 1 and w_k g_k - p_k w_k g_k would cancel; the sum without k is taken directly for the top
    weighted = w * g
    others_slope = weighted.sum() - weighted
    others_slope[top] = np.delete(weighted, top).sum()
    grad = (p - q) + o["rho"] * (weighted * one_minus_p - p * others_slope)
    others = np.delete(z, y)
    margin = z[y] - others.max() if others.size else math.inf
    return ce + o["rho"] * bonus, nll, ce, bonus, grad, p[y], margin


def loss(logits, target, options, ignore_index=-100):
    """Per-row values and the gradient of the summed loss over (N, V) float64 logits; ignored rows
    give zeros. Returns a dict of numpy arrays: loss, nll, ce, bonus (N,), grad (N, V), and the
    diagnostics target_prob, margin (N,) with valid (N,) telling the scored rows."""
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target)
    rows, vocab = logits.shape
    out = {name: np.zeros(rows) for name in ("loss", "nll", "ce", "bonus", "target_prob", "margin")}
    out["grad"] = np.zeros((rows, vocab))
    out["valid"] = target != ignore_index
    for i in range(rows):
        if out["valid"][i]:
            (out["loss"][i], out["nll"][i], out["ce"][i], out["bonus"][i], out["grad"][i],
             out["target_prob"][i], out["margin"][i]) = row(logits[i], int(target[i]), options)
    return out
