"""A training step of a model with the bytes it keeps for backward, for the
activation-checkpointing tests of Vim and Hier-Vim."""
import torch


def step_with_saved_bytes(model, x, skip, seed=7):
    """(outputs, gradients of x and every parameter, bytes saved for
    backward) of ``model(x)`` with the loss sum(out^2) over every output.
    Bytes are counted once per storage (saved-tensor hooks), leaving out
    the storages in ``skip`` (the parameters and the image, which any
    model keeps). ``seed`` is set before the forward so that drop path
    draws the same in twins."""
    skipped = {t.untyped_storage().data_ptr() for t in skip}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skipped:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    loss = sum(o.square().sum() for o in outs)
    grads = torch.autograd.grad(loss, [x] + list(model.parameters()))
    return outs, grads, sum(storages.values())


def compare_checkpointed_twin(plain, ckpt, x):
    """Loads ``plain``'s weights into ``ckpt`` (its with_cp twin), checks
    that both give the same outputs and gradients (drop path replayed) and
    returns the bytes each keeps for backward, (plain, ckpt), the
    parameters and the image left out."""
    ckpt.load_state_dict(plain.state_dict())
    skip = [x, *plain.parameters(), *ckpt.parameters()]
    (outs, grads, saved), (outs_cp, grads_cp, saved_cp) = [
        step_with_saved_bytes(model, x, skip) for model in (plain, ckpt)]
    for o_cp, o in zip(outs_cp, outs):
        torch.testing.assert_close(o_cp, o)
    for g_cp, g in zip(grads_cp, grads):
        torch.testing.assert_close(g_cp, g)
    return saved, saved_cp
