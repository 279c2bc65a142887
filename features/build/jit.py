"""The compiled pass behind ``features/build/kernel.py`` (numba, ``cache=True``): one sequential walk per chunk
over each patient's snapshots in time order, with one pointer per event source. Imported only when a build needs
it (importing numba takes a second; the first call after an install compiles, about 8 s, then loads from cache)."""

from __future__ import annotations

import numba
import numpy as np

from carecast.targets import MODEL_CHANNELS
from features.catalog import ENGAGEMENT_WINDOW
from features.feeds.contracts import DEPARTMENTS

nan = np.nan
N_DEPT, N_CH = len(DEPARTMENTS), len(MODEL_CHANNELS)
DAY_S = 86_400
#: snapshots per output block (``run``): 1,024 x 75 values is 600 kB, inside the L2 cache
BLOCK = 1024
#: a positive response answers the patient's latest unanswered send on the same channel when it comes at most this
#: long after it (the numerator of the response rates). The feed has no reply-to link: without the pairing a rate
#: counted the responses in a window whose sends fell before it, and patient-initiated messages, and went above 1
ANSWER_WITHIN_US = 7 * DAY_S * 1_000_000


@numba.njit(cache=True, nogil=True)
def rate(num: float, den: float) -> float:
    """num / den where den > 0, else NaN."""
    return num / den if den > 0 else nan


@numba.njit(cache=True, nogil=True)
def first_of(pk: np.ndarray, i: int, p: int) -> int:
    """The first position at or after i whose patient code is not below p."""
    while i < len(pk) and pk[i] < p:
        i += 1
    return i


@numba.njit(cache=True, nogil=True)
def flush(blk: np.ndarray, rows: int, out32: np.ndarray, out64: np.ndarray, at: int) -> None:
    """Move a block of snapshot rows into the per-column output rows (sequential runs in both): the features as
    float32, the timestamps (the block's last columns) as float64."""
    n32 = out32.shape[0]
    for f in range(n32):
        for i in range(rows):
            out32[f, at + i] = blk[i, f]
    for f in range(out64.shape[0]):
        for i in range(rows):
            out64[f, at + i] = blk[i, n32 + f]


@numba.njit(cache=True, nogil=True)
def run(snap_pk, snap_ts, keep_us, drop, windows,
        v_pk, v_ts, v_out, v_dept,
        b_pk, b_ts, b_amt, b_cents, b_whole, b_plan,
        p_pk, p_ts, p_amt, p_cents, p_whole,
        s_pk, s_ts, s_kind, s_amt, s_cents, s_whole,
        d_pk, d_ts, d_step,
        e_pk, e_ts, e_ch, e_out, e_pos, e_login,
        k_pk, k_booked, k_end, k_sched, x_pk, x_end, out32, out64, kept):
    """``snapshot_kernel.snapshot_features``'s pass, one function on purpose (each source's pointer and running
    state live together): fills ``out32``/``out64`` and ``kept``; returns the number of snapshots kept."""
    n = len(snap_pk)
    nw = len(windows)
    iv = ib = ip = i_s = i_d = ie = ik = ix = 0
    # the bookings open at t (booked <= t < end) of the current patient: end and appointment time, unordered
    open_end = np.empty(len(k_pk), np.int64)
    open_sched = np.empty(len(k_pk), np.int64)
    # window counts per visit window: outcomes, no-shows, completed, cancelled
    w_out = np.zeros(nw, np.int64)
    w_ns = np.zeros(nw, np.int64)
    w_done = np.zeros(nw, np.int64)
    w_cx = np.zeros(nw, np.int64)
    lv = np.zeros(nw, np.int64)
    dept = np.zeros(N_DEPT, np.int64)
    sends = np.zeros(N_CH, np.int64)
    resp = np.zeros(N_CH, np.int64)
    # answered sends per model channel (all time); the latest unanswered send per channel slot (other channels: the
    # last slot); whether each send of the chunk has been answered (by a response known at the current snapshot)
    ans = np.zeros(N_CH, np.int64)
    open_send = np.full(N_CH + 1, -1, np.int64)
    answered = np.zeros(len(e_pk), np.bool_)
    last_resp_ch = np.empty(N_CH, np.float64)
    kinds = np.zeros(3, np.int64)
    # values are written a snapshot at a time into a small block that stays in cache, then moved into the
    # per-feature rows: writing 75 rows far apart for every snapshot missed the TLB on each value
    blk = np.empty((BLOCK, out32.shape[0] + out64.shape[0]), np.float64)
    bi = 0
    k = 0
    s = 0
    while s < n:
        p = snap_pk[s]
        end = s
        while end < n and snap_pk[end] == p:
            end += 1
        iv, ib, ip = first_of(v_pk, iv, p), first_of(b_pk, ib, p), first_of(p_pk, ip, p)
        i_s, i_d, ie = first_of(s_pk, i_s, p), first_of(d_pk, i_d, p), first_of(e_pk, ie, p)
        ik, ix = first_of(k_pk, ik, p), first_of(x_pk, ix, p)
        n_open = 0
        # the patient's running state
        v_all = ns_all = done_all = cx_all = 0
        for w in range(nw):
            w_out[w] = w_ns[w] = w_done[w] = w_cx[w] = 0
            lv[w] = iv
        dept[:] = 0
        streak = max_streak = 0
        last_done = last_ns = nan
        b_n = plan_n = 0
        b_c = p_c = s_c = 0
        b_f = p_f = s_f = 0.0
        kinds[:] = 0
        pd_now = 0
        pd_since = nan
        sends[:] = 0
        resp[:] = 0
        ans[:] = 0
        open_send[:] = -1
        last_resp_ch[:] = nan
        last_resp = nan
        logins = e_sends = e_resp = e_logins = e_ans = 0
        le = ie
        prev_sig = (-1, -1, -1, -1, -1, -1, -1, -1, -1)
        prev_lv = np.full(nw, -1, np.int64)
        for j in range(s, end):
            t = snap_ts[j]
            # visits known at t, in their tie order (the no-show streak)
            while iv < len(v_pk) and v_pk[iv] == p and v_ts[iv] <= t:
                o = v_out[iv]
                v_all += 1
                for w in range(nw):
                    w_out[w] += 1
                if o == 0:
                    done_all += 1
                    for w in range(nw):
                        w_done[w] += 1
                    streak = 0
                    last_done = v_ts[iv] / 1e6
                elif o == 1:
                    ns_all += 1
                    for w in range(nw):
                        w_ns[w] += 1
                    streak += 1
                    max_streak = max(max_streak, streak)
                    last_ns = v_ts[iv] / 1e6
                else:
                    cx_all += 1
                    for w in range(nw):
                        w_cx[w] += 1
                d = v_dept[iv]
                if 0 <= d < N_DEPT:
                    dept[d] += 1
                iv += 1
            # windows [t - days, t], the lower edge in whole seconds
            t_s = t // 1_000_000
            for w in range(nw):
                start = (t_s - windows[w] * DAY_S) * 1_000_000
                while lv[w] < iv and v_ts[lv[w]] < start:
                    o = v_out[lv[w]]
                    w_out[w] -= 1
                    if o == 0:
                        w_done[w] -= 1
                    elif o == 1:
                        w_ns[w] -= 1
                    else:
                        w_cx[w] -= 1
                    lv[w] += 1
            while ib < len(b_pk) and b_pk[ib] == p and b_ts[ib] <= t:
                b_n += 1
                b_c += b_cents[ib]
                b_f += b_amt[ib]
                plan_n += b_plan[ib]
                ib += 1
            while ip < len(p_pk) and p_pk[ip] == p and p_ts[ip] <= t:
                p_c += p_cents[ip]
                p_f += p_amt[ip]
                ip += 1
            while i_s < len(s_pk) and s_pk[i_s] == p and s_ts[i_s] <= t:
                if 0 <= s_kind[i_s] < 3:
                    kinds[s_kind[i_s]] += 1
                s_c += s_cents[i_s]
                s_f += s_amt[i_s]
                i_s += 1
            # past due: events at the same time count together (a statement settled as another falls due)
            while i_d < len(d_pk) and d_pk[i_d] == p and d_ts[i_d] <= t:
                tt = d_ts[i_d]
                before = pd_now
                while i_d < len(d_pk) and d_pk[i_d] == p and d_ts[i_d] == tt:
                    pd_now += d_step[i_d]
                    i_d += 1
                if before <= 0 and pd_now > 0:
                    pd_since = tt / 1e6
            while ie < len(e_pk) and e_pk[ie] == p and e_ts[ie] <= t:
                ch = e_ch[ie]
                slot = ch if 0 <= ch < N_CH else N_CH
                if e_out[ie]:
                    e_sends += 1
                    if 0 <= ch < N_CH:
                        sends[ch] += 1
                    open_send[slot] = ie   # a newer send supersedes an unanswered older one
                if e_pos[ie]:
                    # the send it answers: itself (a send recorded with its outcome), else the latest unanswered
                    # send on the channel within ANSWER_WITHIN_US; the window counts it while that send is in the
                    # window (not yet evicted: q >= le), and the eviction below takes it out with its send
                    q = open_send[slot]
                    if q >= 0 and e_ts[ie] - e_ts[q] <= ANSWER_WITHIN_US:
                        answered[q] = True
                        open_send[slot] = -1
                        if 0 <= ch < N_CH:
                            ans[ch] += 1
                        if q >= le:
                            e_ans += 1
                    e_resp += 1
                    last_resp = e_ts[ie] / 1e6
                    if 0 <= ch < N_CH:
                        resp[ch] += 1
                        last_resp_ch[ch] = e_ts[ie] / 1e6
                if e_login[ie]:
                    e_logins += 1
                    logins += 1
                ie += 1
            start = (t_s - ENGAGEMENT_WINDOW * DAY_S) * 1_000_000
            while le < ie and e_ts[le] < start:
                if e_out[le]:
                    e_sends -= 1
                    if answered[le]:
                        e_ans -= 1
                if e_pos[le]:
                    e_resp -= 1
                if e_login[le]:
                    e_logins -= 1
                le += 1
            # bookings (in booked order) open when booked, (in end order) closed at their end: the open ones
            # are a handful, so each snapshot looks at those, not at every booking of the patient
            while ik < len(k_pk) and k_pk[ik] == p and k_booked[ik] <= t:
                if k_end[ik] > k_booked[ik]:   # else never open
                    open_end[n_open] = k_end[ik]
                    open_sched[n_open] = k_sched[ik]
                    n_open += 1
                ik += 1
            while ix < len(x_pk) and x_pk[ix] == p and x_end[ix] <= t:
                ix += 1
            still_open = 0
            nxt = np.inf
            for q in range(n_open):
                if open_end[q] > t:
                    open_end[still_open] = open_end[q]
                    open_sched[still_open] = open_sched[q]
                    still_open += 1
                    nxt = min(nxt, open_sched[q] / 1e6)
            n_open = still_open
            sig = (iv, ib, ip, i_s, i_d, ie, le, ik, ix)   # ik, ix: the booking edges passed by t
            same = sig == prev_sig
            for w in range(nw):
                same = same and lv[w] == prev_lv[w]
                prev_lv[w] = lv[w]
            prev_sig = sig
            if drop and same and t != keep_us:
                continue
            r = 0
            for w in range(nw + 1):
                if w < nw:
                    a, b_, d_, x = w_out[w], w_ns[w], w_done[w], w_cx[w]
                else:
                    a, b_, d_, x = v_all, ns_all, done_all, cx_all
                blk[bi, r] = a
                blk[bi, r + 1] = b_
                blk[bi, r + 2] = rate(b_, b_ + d_)
                blk[bi, r + 3] = rate(x, a)
                r += 4
            blk[bi, r] = done_all
            blk[bi, r + 1] = streak
            blk[bi, r + 2] = max_streak
            blk[bi, r + 3] = n_open
            r += 4
            for i in range(N_DEPT):
                blk[bi, r + i] = rate(dept[i], v_all)
            r += N_DEPT
            billed = b_c / 100.0 if b_whole else b_f
            paid = p_c / 100.0 if p_whole else p_f
            wo = s_c / 100.0 if s_whole else s_f
            blk[bi, r] = b_n
            blk[bi, r + 1] = billed
            blk[bi, r + 2] = paid
            blk[bi, r + 3] = max(billed - paid - wo, 0.0)
            share = rate(paid, billed)
            # a statement may be paid up to half a cent over its amount (the billing contract's tolerance): a share
            # is at most 1
            blk[bi, r + 4] = 1.0 if share > 1.0 else share
            blk[bi, r + 5] = pd_now
            blk[bi, r + 6] = 1.0 if kinds[0] > 0 else 0.0
            blk[bi, r + 7] = 1.0 if kinds[1] > 0 else 0.0
            blk[bi, r + 8] = 1.0 if kinds[2] > 0 else 0.0
            blk[bi, r + 9] = 1.0 if plan_n > 0 else 0.0
            r += 10
            for i in range(N_CH):
                blk[bi, r] = sends[i]
                blk[bi, r + 1] = resp[i]
                blk[bi, r + 2] = rate(ans[i], sends[i])
                r += 3
            blk[bi, r] = e_sends
            blk[bi, r + 1] = e_resp
            blk[bi, r + 2] = rate(e_ans, e_sends)
            blk[bi, r + 3] = e_logins
            blk[bi, r + 4] = logins
            r += 5
            blk[bi, r] = last_done
            blk[bi, r + 1] = last_ns
            blk[bi, r + 2] = last_resp
            for i in range(N_CH):
                blk[bi, r + 3 + i] = last_resp_ch[i]
            r += 3 + N_CH
            blk[bi, r] = pd_since if pd_now > 0 else nan
            blk[bi, r + 1] = nxt if n_open > 0 else nan
            kept[k] = j
            k += 1
            bi += 1
            if bi == BLOCK:
                flush(blk, bi, out32, out64, k - bi)
                bi = 0
        s = end
    flush(blk, bi, out32, out64, k - bi)
    return k
