"""An independent, functional transcription of the reference Vim forward.

Test oracle only: it reads the RELEASED key layout directly, runs the
backward branch the way the reference code does (flip the sequence, causal
conv, scan, flip back) and its own float64 scan loop. It is checked against
the recorded reference outputs (expected_vim-ti_seed0.npz) and then stands in
for the reference model on the architectures that have no recording.
"""
import torch
import torch.nn.functional as F


def _rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _scan(u, delta, A, B, C, D):
    """u, delta: (b, E, L); A: (E, N); B, C: (b, N, L) -> (b, E, L)."""
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        dA = torch.exp(delta[:, :, t, None] * A)
        h = dA * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum('ben,bn->be', h, C[:, :, t]))
    return torch.stack(ys, -1) + u * D[:, None]


def _branch(xz, sd, p, sfx, d_state):
    """One direction of mamba_inner_fn_no_out_proj on xz (b, 2E, L)."""
    x, z = xz.chunk(2, dim=1)
    w = sd[f'{p}conv1d{sfx}.weight']
    L = x.shape[-1]
    x = F.silu(F.conv1d(x, w, sd[f'{p}conv1d{sfx}.bias'], padding=w.shape[-1] - 1,
                        groups=w.shape[0])[..., :L])
    x_dbl = torch.einsum('bel,re->blr', x, sd[f'{p}x_proj{sfx}.weight'])
    rank = sd[f'{p}dt_proj{sfx}.weight'].shape[1]
    dt, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=-1)
    delta = torch.einsum('blr,er->bel', dt, sd[f'{p}dt_proj{sfx}.weight'])
    delta = F.softplus(delta + sd[f'{p}dt_proj{sfx}.bias'][:, None])
    A = -torch.exp(sd[f'{p}A{sfx}_log'])
    y = _scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), sd[f'{p}D{sfx}'])
    return y * F.silu(z)


def reference_vim_forward(state_dict, images, stride=16):
    """Released-layout state dict + images (b, 3, H, W) at the checkpoint's
    own resolution -> (features (b, D), logits (b, classes)), float64."""
    sd = {k: v.double() for k, v in state_dict.items()}
    x = F.conv2d(images.double(), sd['patch_embed.proj.weight'],
                 sd['patch_embed.proj.bias'], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    mid = x.shape[1] // 2
    cls = sd['cls_token'].expand(x.shape[0], -1, -1)
    x = torch.cat([x[:, :mid], cls, x[:, mid:]], dim=1) + sd['pos_embed']
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('layers.'))
    d_state = sd['layers.0.mixer.A_log'].shape[1]
    residual, hidden = None, x
    for i in range(depth):
        p = f'layers.{i}.mixer.'
        residual = hidden if residual is None else residual + hidden
        h = _rms_norm(residual, sd[f'layers.{i}.norm.weight'])
        xz = torch.einsum('bld,fd->bfl', h, sd[p + 'in_proj.weight'])
        y_f = _branch(xz, sd, p, '', d_state)
        y_b = _branch(xz.flip(-1), sd, p, '_b', d_state).flip(-1)
        hidden = torch.einsum('bel,de->bld', (y_f + y_b) / 2,
                              sd[p + 'out_proj.weight'])
    features = _rms_norm(residual + hidden, sd['norm_f.weight'])[:, mid]
    logits = features @ sd['head.weight'].t() + sd['head.bias']
    return features, logits
