# mypy: ignore-errors
# (Triton kernels: triton.language code, not typed Python.)
"""The Triton kernels of :mod:`ssim_patch.backends.triton`: one fused forward, one fused backward.

Imported only by that module, and only once ``import triton`` works. Both kernels run a 1-D
persistent grid: program ``pid`` takes tiles ``pid, pid + G, pid + 2G, ...`` (G programs), a tile
being one plane's band of ``BLOCK_H`` rows by a strip of ``BLOCK_W`` columns, so any number of
planes runs with any grid. Each tile sweeps its rows top to bottom:

- forward: each lane takes two adjacent output columns, whose windows share ``KW - 1`` of the
  ``KW + 1`` columns they read; for each input row of the band's window, the horizontal pass
  loads each of those once (x and y; in an interior strip at constant offsets from one pointer,
  in an edge strip reflect-indexed), forms the 4 moment terms once, and weighs them into both
  columns' 4 moment rows; the vertical pass is transposed: a
  tuple of ``KH - 1`` partial sums (the output rows still open, each with its rows so far) that
  each new row completes (the oldest) or adds one term to (the others), the taps loaded once per
  program. The formula then runs on the completed row.
- backward: the same sweep over adjoint rows: the horizontal transpose is ``KW`` loads of each
  adjoint row at constant offsets from one pointer, the vertical transpose the forward's
  transposed form (the ``KH - 1`` image rows still open carry their partial sums; each adjoint row
  completes one). Rows and (in the edge launch) columns within a window of the border take their
  weights, the taps summed over their reflected preimages (p, -p and 2(n-1)-p), from a table the
  launcher builds: no gathers through the pads.

Per-tile sums go to a buffer ``[planes, tiles per plane]`` that the launcher reduces in a fixed order:
no atomics, two runs bit-identical. All offsets into images and maps are int64.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _plane_shift(base, stride_h, stride_w, H, W):
    """The shift of one image's plane: the mean of 8 fixed samples (2 rows by 4 columns), summed
    in a fixed order and scaled by 1/8 (exact), so every kernel gets the same bits."""
    total = 0.0
    for i in tl.static_range(2):
        row = tl.cast((H * (2 * i + 1)) // 4, tl.int64) * stride_h
        for j in tl.static_range(4):
            col = tl.cast((W * (2 * j + 1)) // 8, tl.int64) * stride_w
            total += tl.load(base + row + col).to(tl.float32)
    return total * 0.125


@triton.jit
def _zeros(count: tl.constexpr, BLOCK_W: tl.constexpr):
    """``count`` zero rows: the partial sums of one open row."""
    z = tl.zeros([BLOCK_W], dtype=tl.float32)
    out = ()
    for _k in tl.static_range(count):
        out = out + (z,)  # noqa: RUF005 (Triton's JIT: no starred tuples)
    return out


@triton.jit
def _axpy(acc, w, h):
    """``acc[k] + w * h[k]`` for each row ``k`` of the tuples ``acc`` and ``h``."""
    out = ()
    for k in tl.static_range(len(h)):
        out = out + (acc[k] + w * h[k],)  # noqa: RUF005
    return out


@triton.jit
def _scaled(w, h):
    """``w * h[k]`` for each row ``k`` of ``h``."""
    out = ()
    for k in tl.static_range(len(h)):
        out = out + (w * h[k],)  # noqa: RUF005
    return out


@triton.jit
def _fir_step(part, wt, h, KH: tl.constexpr):
    """One step of a ``KH``-tap filter along the sweep, in transposed form: ``part`` holds the
    partial sums of the ``KH - 1`` open rows, oldest first; the new rows ``h`` (a tuple) add
    ``wt[t] * h`` to the row ``t`` steps from completion. Returns the completed row and the new
    ``part``."""
    done = _axpy(part[0], wt[0], h) if KH > 1 else _scaled(wt[0], h)
    moved = ()
    for i in tl.static_range(KH - 2):
        moved = moved + (_axpy(part[i + 1], wt[i + 1], h),)  # noqa: RUF005
    if KH > 1:
        moved = moved + (_scaled(wt[KH - 1], h),)  # noqa: RUF005
    return done, moved


@triton.jit
def ssim_forward_kernel(
    x_ptr,
    y_ptr,
    sxn,
    sxc,
    sxh,
    sxw,
    syn,
    syc,
    syh,
    syw,
    taps_h_ptr,
    taps_w_ptr,
    c1_ptr,  # 2 c1, 0-d float32
    c2_ptr,  # 2 c2
    eps_ptr,  # 4 eps (read when HAS_EPS)
    flat_ptr,  # UQI's flat-window tolerance (read when HAS_FLAT)
    unit,  # the S map's gradient for a unit upstream gradient per image
    sums_ptr,  # [P, tiles]: per-tile sums of S
    cs_ptr,  # [P, tiles]: per-tile sums of cs (WRITE_CS)
    csum_ptr,  # [2, P, tiles]: per-tile sums of g_c1, g_c2 (WRITE_CSUMS)
    map_ptr,  # [P, OH, OW]: the S map (WRITE_MAP)
    terms_ptr,  # [4, P, OH, OW]: mu_s, mu_d, C_num, C_den (WRITE_TERMS)
    shift_ptr,  # [2, P]: a_s, a_d (WRITE_TERMS)
    adj_ptr,  # [S, P, OH, OW]: g_x, g_y (where needed), g_diff, g_cross (WRITE_ADJ)
    P,
    C,
    H,
    W,
    OH,
    OW,
    strip0,  # this launch's strips: strip0 + i + (gap where i >= skip), i < strips
    strips,
    skip,
    gap,
    all_strips,  # the strips of a plane, all launches (a tile's sums at band * all_strips + strip)
    KH: tl.constexpr,
    KW: tl.constexpr,
    PAD_H: tl.constexpr,
    PAD_W: tl.constexpr,
    EDGE: tl.constexpr,  # the strips may reach the reflected pads or past the output's last column
    HAS_EPS: tl.constexpr,
    HAS_FLAT: tl.constexpr,
    WRITE_MAP: tl.constexpr,
    WRITE_CS: tl.constexpr,
    WRITE_TERMS: tl.constexpr,
    WRITE_ADJ: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_Y: tl.constexpr,
    Y_AT: tl.constexpr,  # index of g_y in the adjoint stack (int(NEED_X))
    DIFF_AT: tl.constexpr,  # index of g_diff = g_cross - g_sq (NEED_X + NEED_Y); g_cross follows
    WRITE_CSUMS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    bands = tl.cdiv(OH, BLOCK_H)
    per_plane = strips * bands
    total = P * per_plane
    pairs = tl.arange(0, BLOCK_W // 2)
    two_c1 = tl.load(c1_ptr).to(tl.float32)
    two_c2 = tl.load(c2_ptr).to(tl.float32)
    four_eps = 0.0
    if HAS_EPS:
        four_eps = tl.load(eps_ptr).to(tl.float32)
    flat = 0.0
    if HAS_FLAT:
        flat = tl.load(flat_ptr).to(tl.float32)
    plane_size = OH * OW
    taps_w = ()  # the row's taps, loaded once (a load in the row loop is redone each row)
    for j in tl.static_range(KW):
        taps_w = taps_w + (tl.load(taps_w_ptr + j),)  # noqa: RUF005
    wts = ()  # the vertical taps, last first (the weight of a row t steps before its output's last)
    for t in tl.static_range(KH):
        wts = wts + (tl.load(taps_h_ptr + (KH - 1 - t)),)  # noqa: RUF005 (t steps from completion)
    for tile in range(pid, total, programs):
        plane = tile // per_plane
        rest = tile % per_plane
        band = rest // strips
        strip = rest % strips
        strip = strip0 + strip + tl.where(strip >= skip, gap, 0)
        n = tl.cast(plane // C, tl.int64)
        ch = tl.cast(plane % C, tl.int64)
        xb = x_ptr + n * sxn + ch * sxc
        yb = y_ptr + n * syn + ch * syc
        a_x = _plane_shift(xb, sxh, sxw, H, W)
        a_y = _plane_shift(yb, syh, syw, H, W)
        a_s = a_x + a_y
        a_d = a_x - a_y
        # two adjacent output columns a lane, cols and cols + 1: their windows share KW - 1 of
        # the KW + 1 columns they read, so each read column is loaded, converted and squared once
        cols = strip * BLOCK_W + 2 * pairs
        # the window's columns: in an edge strip reflected (-i and 2(W-1)-i), a lane past the
        # output's last reading inside the row (its results are dropped), so no load needs a
        # mask (a masked load zeroes its register first); in an interior strip at constant
        # offsets from one pointer a row
        offs_x = ()
        offs_y = ()
        if EDGE:
            for k in tl.static_range(KW + 1):
                c = tl.abs(tl.minimum(cols + k, OW + (KW - 2)) - PAD_W)
                c = tl.where(c > W - 1, 2 * (W - 1) - c, c)
                offs_x = offs_x + (c * sxw,)  # noqa: RUF005
                offs_y = offs_y + (c * syw,)  # noqa: RUF005
        o0 = band * BLOCK_H
        o1 = tl.minimum(o0 + BLOCK_H, OH)
        plane64 = tl.cast(plane, tl.int64)
        # the vertical pass, transposed: part[i] holds the partial sums of the 4 moments of both
        # columns of the output row i + 1 - (KH - 1) rows below the current one (its rows so
        # far); each new row completes the oldest and adds one weighted term to each of the others
        part = ()
        for _i in tl.static_range(KH - 1):
            part = part + (_zeros(8, BLOCK_W // 2),)  # noqa: RUF005
        sums = _zeros(4, BLOCK_W // 2)  # S, cs, g_c1, g_c2
        for p in range(o0, o1 + KH - 1):
            # the image row at padded row p (reflected), filtered along the row: 4 moment rows
            # for each column of the pair
            r = tl.abs(p - PAD_H)
            r = tl.cast(tl.where(r > H - 1, 2 * (H - 1) - r, r), tl.int64)
            xr = xb + r * sxh
            yr = yb + r * syh
            ha = _zeros(4, BLOCK_W // 2)
            hb = _zeros(4, BLOCK_W // 2)
            xc = xr + (cols - PAD_W) * sxw
            yc = yr + (cols - PAD_W) * syw
            for k in tl.static_range(KW + 1):
                if EDGE:
                    xv = tl.load(xr + offs_x[k]).to(tl.float32)
                    yv = tl.load(yr + offs_y[k]).to(tl.float32)
                else:
                    xv = tl.load(xc + k * sxw).to(tl.float32)
                    yv = tl.load(yc + k * syw).to(tl.float32)
                s = (xv + yv) - a_s
                d = (xv - yv) - a_d
                v = (s, d, s * s, d * d)
                if k < KW:
                    ha = _axpy(ha, taps_w[k], v)
                if k > 0:
                    hb = _axpy(hb, taps_w[k - 1], v)
            # output row o = p - (KH - 1) is complete: its partial sums plus row p's term
            done, part = _fir_step(part, wts, ha + hb, KH)
            o = p - (KH - 1)
            if o >= o0:
                at = tl.cast(o, tl.int64) * OW + cols
                for half in tl.static_range(2):
                    sums = _output(
                        done[4 * half],
                        done[4 * half + 1],
                        done[4 * half + 2],
                        done[4 * half + 3],
                        sums,
                        at + half,
                        cols + half < OW,
                        a_s,
                        a_d,
                        two_c1,
                        two_c2,
                        four_eps,
                        flat,
                        unit,
                        map_ptr,
                        terms_ptr,
                        adj_ptr,
                        P,
                        plane64,
                        plane_size,
                        HAS_EPS,
                        HAS_FLAT,
                        WRITE_MAP,
                        WRITE_CS,
                        WRITE_TERMS,
                        WRITE_ADJ,
                        NEED_X,
                        NEED_Y,
                        Y_AT,
                        DIFF_AT,
                        WRITE_CSUMS,
                    )
        at_tile = (plane64 * bands + band) * all_strips + strip
        if WRITE_TERMS:  # noqa: SIM102 (a compile-time branch, then a run-time one)
            if rest == 0:
                tl.store(shift_ptr + plane64, a_s)
                tl.store(shift_ptr + P + plane64, a_d)
        tl.store(sums_ptr + at_tile, tl.sum(sums[0], axis=0))
        if WRITE_CS:
            tl.store(cs_ptr + at_tile, tl.sum(sums[1], axis=0))
        if WRITE_CSUMS:
            tl.store(csum_ptr + at_tile, tl.sum(sums[2], axis=0))
            tl.store(csum_ptr + P * bands * all_strips + at_tile, tl.sum(sums[3], axis=0))


@triton.jit
def _output(
    m0,
    m1,
    m2,
    m3,
    sums,
    at,
    cmask,
    a_s,
    a_d,
    two_c1,
    two_c2,
    four_eps,
    flat,
    unit,
    map_ptr,
    terms_ptr,
    adj_ptr,
    P,
    plane64,
    plane_size,
    HAS_EPS: tl.constexpr,
    HAS_FLAT: tl.constexpr,
    WRITE_MAP: tl.constexpr,
    WRITE_CS: tl.constexpr,
    WRITE_TERMS: tl.constexpr,
    WRITE_ADJ: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_Y: tl.constexpr,
    Y_AT: tl.constexpr,
    DIFF_AT: tl.constexpr,
    WRITE_CSUMS: tl.constexpr,
):
    """One output row's columns from their 4 shifted moments: the formula, the outputs stored at
    ``at`` (offsets within a plane) where ``cmask``, and the sums ``(S, cs, g_c1, g_c2)`` updated."""
    sum_s, sum_cs, sum_c1, sum_c2 = sums
    # _formula.terms: variances clamped at 0 (NaN kept), contrast factors
    v_s = m2 - m0 * m0
    v_d = m3 - m1 * m1
    v_s = tl.where(v_s < 0.0, 0.0, v_s)
    v_d = tl.where(v_d < 0.0, 0.0, v_d)
    if HAS_FLAT:  # UQI: a flat window has no variance, and none to differentiate
        is_flat = (v_s + v_d) <= flat * (m2 + m3)
        v_s = tl.where(is_flat, 0.0, v_s)
        v_d = tl.where(is_flat, 0.0, v_d)
    c_den = (two_c2 + v_s) + v_d
    c_num = c_den - 2.0 * v_d
    mu_s = m0 + a_s
    mu_d = m1 + a_d
    # _formula.luminance / similarity_map
    l_den = (two_c1 + mu_s * mu_s) + mu_d * mu_d
    l_num = l_den - 2.0 * (mu_d * mu_d)
    den = l_den * c_den
    if HAS_EPS:
        den = four_eps + den
    sim = (l_num * c_num) / den
    sum_s += tl.where(cmask, sim, 0.0)
    if WRITE_CS:
        sum_cs += tl.where(cmask, c_num / c_den, 0.0)
    if WRITE_MAP:
        tl.store(map_ptr + plane64 * plane_size + at, sim, mask=cmask)
    if WRITE_TERMS:
        tl.store(terms_ptr + plane64 * plane_size + at, mu_s, mask=cmask)
        tl.store(terms_ptr + (P + plane64) * plane_size + at, mu_d, mask=cmask)
        tl.store(terms_ptr + (2 * P + plane64) * plane_size + at, c_num, mask=cmask)
        tl.store(terms_ptr + (3 * P + plane64) * plane_size + at, c_den, mask=cmask)
    if WRITE_ADJ:
        # _formula.adjoints for grad_map = unit
        u = (2.0 * unit) / den
        if HAS_FLAT:
            u = tl.where(c_den == 0.0, 0.0, u)
        v = u * sim
        a = u * c_num
        b = v * c_den
        g_cross = u * l_num
        g_sq = v * l_den
        ab = a - b
        a_b = a + b
        cd = g_cross - g_sq
        c_d = g_cross + g_sq
        g_m0 = mu_s * ab - m0 * cd
        g_m1 = m1 * c_d - mu_d * a_b
        if NEED_X:
            tl.store(adj_ptr + plane64 * plane_size + at, g_m0 + g_m1, mask=cmask)
        if NEED_Y:
            tl.store(adj_ptr + (Y_AT * P + plane64) * plane_size + at, g_m0 - g_m1, mask=cmask)
        tl.store(adj_ptr + (DIFF_AT * P + plane64) * plane_size + at, cd, mask=cmask)  # g_diff
        tl.store(adj_ptr + ((DIFF_AT + 1) * P + plane64) * plane_size + at, g_cross, mask=cmask)
        if WRITE_CSUMS:
            sum_c1 += tl.where(cmask, ab, 0.0)
            sum_c2 += tl.where(cmask, cd, 0.0)
    return sum_s, sum_cs, sum_c1, sum_c2


@triton.jit
def _spread_row(
    base,
    cols,
    cmask,
    OW,
    taps_w,
    col_w,
    EDGE: tl.constexpr,
    MASKS: tl.constexpr,
    KW: tl.constexpr,
    PAD_W: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """The horizontal transpose of one adjoint row at the strip's image columns ``cols``. ``EDGE``:
    the strips may reach the reflected pads, each column's weights read at ``col_w`` (the
    launcher's table: its taps with the reflections summed), else the taps ``taps_w`` (a tuple); ``MASKS``: loads are bounded (an
    interior strip of "same" padding reads inside the row)."""
    out = tl.zeros([BLOCK_W], dtype=tl.float32)
    at = base + cols  # each tap at a constant offset from it
    for j in tl.static_range(KW):
        if EDGE:  # noqa: SIM108 (a compile-time branch)
            w = tl.load(col_w + j)
        else:
            w = taps_w[j]
        if MASKS:
            q = cols + (PAD_W - j)
            g = tl.load(at + (PAD_W - j), mask=cmask & (q >= 0) & (q < OW), other=0.0)
        else:
            g = tl.load(at + (PAD_W - j))
        out += w * g
    return out


@triton.jit
def ssim_backward_kernel(
    adj_ptr,  # [S, P, OH, OW] float32: g_x, g_y (where needed), g_diff = g_cross - g_sq, g_cross
    scale_ptr,  # [N]: the upstream gradient per image (HAS_SCALE)
    scale_stride,
    x_ptr,
    y_ptr,
    gx_ptr,
    gy_ptr,
    sxn,
    sxc,
    sxh,
    sxw,
    syn,
    syc,
    syh,
    syw,
    gxn,
    gxc,
    gxh,
    gxw,
    gyn,
    gyc,
    gyh,
    gyw,
    taps_h_ptr,
    taps_w_ptr,
    edge_w_ptr,  # the weights of the rows near the edges, then (EDGE) those of the columns
    P,
    C,
    H,
    W,
    OH,
    OW,
    strip0,  # this launch's strips: strip0 + i + (gap where i >= skip), i < strips
    strips,
    skip,
    gap,
    KH: tl.constexpr,
    KW: tl.constexpr,
    PAD_H: tl.constexpr,
    PAD_W: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_Y: tl.constexpr,
    Y_AT: tl.constexpr,
    DIFF_AT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EDGE: tl.constexpr,  # the strips may reach the reflected pads (each column's weights from the table)
    EDGE_AT: tl.constexpr,  # where the columns' weights start in edge_w_ptr
    MASKS: tl.constexpr,  # bounded loads of the adjoint rows (not needed inside a "same" interior)
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    per_plane = strips * tl.cdiv(H, BLOCK_H)
    total = P * per_plane
    lanes = tl.arange(0, BLOCK_W)
    plane_size = OH * OW
    taps_w = ()  # the row's taps (interior columns), loaded once
    for j in tl.static_range(KW):
        taps_w = taps_w + (tl.load(taps_w_ptr + j),)  # noqa: RUF005
    taps = ()  # the vertical taps, loaded once
    for t in tl.static_range(KH):
        taps = taps + (tl.load(taps_h_ptr + t),)  # noqa: RUF005
    bottom = tl.maximum(H - KH - PAD_H, PAD_H + 1)  # the first step whose rows reach the bottom's
    for tile in range(pid, total, programs):
        plane = tile // per_plane
        rest = tile % per_plane
        band = rest // strips
        strip = rest % strips
        strip = strip0 + strip + tl.where(strip >= skip, gap, 0)
        n = tl.cast(plane // C, tl.int64)
        ch = tl.cast(plane % C, tl.int64)
        xb = x_ptr + n * sxn + ch * sxc
        yb = y_ptr + n * syn + ch * syc
        a_x = _plane_shift(xb, sxh, sxw, H, W)
        a_y = _plane_shift(yb, syh, syw, H, W)
        scale = 1.0
        if HAS_SCALE:
            scale = tl.load(scale_ptr + n * scale_stride).to(tl.float32)
        cols = strip * BLOCK_W + lanes
        cmask = cols < W
        col_w = edge_w_ptr
        if EDGE:  # each column's row of the table: 0..PAD_W, W-1-PAD_W..W-1, then the plain taps
            ce = tl.where(cols >= W - 1 - PAD_W, cols + (2 * PAD_W + 2 - W), 2 * PAD_W + 2)
            ce = tl.where(cols <= PAD_W, cols, ce)
            ce = tl.where(cmask, ce, 2 * PAD_W + 2)
            col_w = edge_w_ptr + EDGE_AT + ce * KW
        r0 = band * BLOCK_H
        r1 = tl.minimum(r0 + BLOCK_H, H)
        plane64 = tl.cast(plane, tl.int64)
        # the vertical transpose, transposed back: part[i] holds the partial sums of image row
        # low + 1 + i (the adjoint rows so far); each adjoint row completes image row low and
        # adds one weighted term to each of the others
        part = ()
        for _i in tl.static_range(KH - 1):
            part = part + (_zeros(2 + NEED_X + NEED_Y, BLOCK_W),)  # noqa: RUF005
        # adjoint row o reaches image rows [o - PAD_H, o - PAD_H + KH - 1]; row r is complete after o = r + PAD_H
        for o in range(r0 + PAD_H - (KH - 1), r1 + PAD_H):
            h_x = tl.zeros([BLOCK_W], dtype=tl.float32)
            h_y = tl.zeros([BLOCK_W], dtype=tl.float32)
            h_d = tl.zeros([BLOCK_W], dtype=tl.float32)
            h_c = tl.zeros([BLOCK_W], dtype=tl.float32)
            if (o >= 0) & (o < OH):
                row = tl.cast(o, tl.int64) * OW
                if NEED_X:
                    h_x = _spread_row(
                        adj_ptr + plane64 * plane_size + row,
                        cols,
                        cmask,
                        OW,
                        taps_w,
                        col_w,
                        EDGE,
                        MASKS,
                        KW,
                        PAD_W,
                        BLOCK_W,
                    )
                if NEED_Y:
                    at = (Y_AT * P + plane64) * plane_size + row
                    h_y = _spread_row(
                        adj_ptr + at, cols, cmask, OW, taps_w, col_w, EDGE, MASKS, KW, PAD_W, BLOCK_W
                    )
                at = (DIFF_AT * P + plane64) * plane_size + row
                h_d = _spread_row(
                    adj_ptr + at, cols, cmask, OW, taps_w, col_w, EDGE, MASKS, KW, PAD_W, BLOCK_W
                )
                at = ((DIFF_AT + 1) * P + plane64) * plane_size + row
                h_c = _spread_row(
                    adj_ptr + at, cols, cmask, OW, taps_w, col_w, EDGE, MASKS, KW, PAD_W, BLOCK_W
                )
            # wt[t]: the weight of adjoint row o in image row low + t (tap t); rows within a
            # window of the top or bottom take theirs, reflections summed, from the launcher's table
            low = o - PAD_H
            wt = taps
            if (low <= PAD_H) | (low >= bottom):
                e = low + (KH - 1)
                if low > PAD_H:
                    e = low + (KH + PAD_H) - bottom
                wt = ()
                for t in tl.static_range(KH):
                    wt = wt + (tl.load(edge_w_ptr + e * KH + t),)  # noqa: RUF005
            rows = (h_d, h_c)
            if NEED_X:
                rows = rows + (h_x,)  # noqa: RUF005
            if NEED_Y:
                rows = rows + (h_y,)  # noqa: RUF005
            done, part = _fir_step(part, wt, rows, KH)
            b_d = done[0]
            b_c = done[1]
            b_x = b_d
            b_y = b_d
            if NEED_X:
                b_x = done[2]
            if NEED_Y:
                b_y = done[2 + NEED_X]
            if low >= r0:
                rr = tl.cast(low, tl.int64)
                xs = tl.load(xb + rr * sxh + cols * sxw, mask=cmask, other=0.0).to(tl.float32) - a_x
                ys = tl.load(yb + rr * syh + cols * syw, mask=cmask, other=0.0).to(tl.float32) - a_y
                # ys - xs, b_x, b_y and b_d (W^T g_diff) are exactly 0 for identical images
                if NEED_X:
                    gx = b_x + 2.0 * (ys - xs) * b_c + 2.0 * xs * b_d
                    if HAS_SCALE:
                        gx = gx * scale
                    at = gx_ptr + n * gxn + ch * gxc + rr * gxh + cols * gxw
                    tl.store(at, gx.to(gx_ptr.dtype.element_ty), mask=cmask)
                if NEED_Y:
                    gy = b_y + 2.0 * (xs - ys) * b_c + 2.0 * ys * b_d
                    if HAS_SCALE:
                        gy = gy * scale
                    at = gy_ptr + n * gyn + ch * gyc + rr * gyh + cols * gyw
                    tl.store(at, gy.to(gy_ptr.dtype.element_ty), mask=cmask)
