"""The inputs of each decoder layer during calibration: layer 0's hidden states, every layer's kwargs.

quantize() and allocate() run HF's own decoder layers one at a time, so they need what the model's
loop hands each layer besides the hidden states: masks, rotary cos/sin, position ids. Those are
the same for every layer in a LLaMA, but not where attention types alternate (Gemma 2/3, Qwen2 with
max_window_layers: a sliding-window mask on some layers; Gemma 3: a local rotary base on them too),
so they are captured per layer, not taken from layer 0.
"""

from __future__ import annotations

import torch


class _Stop(Exception):
    pass


def _passthrough(hidden_states, *args, **kwargs):
    return hidden_states


def _kwargs_key(kw: dict) -> tuple:
    """Identity of a layer's keyword arguments: HF hands every layer of one attention type the very
    same mask and rotary tensors, so equal keys mean one set of kwargs to keep (and move) once."""
    def ident(v):
        if isinstance(v, tuple | list):
            return tuple(ident(x) for x in v)
        return v if v is None or isinstance(v, bool | int | float | str) else id(v)
    return tuple(sorted((k, ident(v)) for k, v in kw.items()))


def _capture_inputs(model, layers, calib, batch_size, device, sink=None):
    """Decoder layer 0's hidden states for each calibration batch, [(hidden, kwargs of layer 0)],
    and the kwargs of every layer, [layer][batch]: layers differ in them where attention types
    alternate (Gemma 2/3, Qwen2 with max_window_layers: sliding-window masks, Gemma 3's local rotary).
    Layers of the same kwargs share one list. The layers do not run: their forward is a pass-through
    while the model's own loop hands each its kwargs. With ``sink``, layer 0's hidden states go to
    sink(batch index, hidden) instead (a streamed run keeps only its own, or spills them) and the
    first list is empty."""
    hidden: list[torch.Tensor] = []
    per_layer: list[list[dict]] = [[] for _ in layers]
    last = len(layers) - 1

    def grab(i):
        def f(_mod, args, kwargs):
            kw = dict(kwargs)
            h = args[0] if args else kw.pop("hidden_states")
            kw.pop("hidden_states", None)
            if i == 0:
                if sink is None:
                    hidden.append(h.detach())
                else:
                    sink(len(per_layer[0]), h.detach())
            per_layer[i].append(kw)
            if i == last:
                raise _Stop
        return f

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(layers)]
    saved = [layer.__dict__.get("forward") for layer in layers]   # accelerate may have set one
    for layer in layers:
        layer.forward = _passthrough
    try:
        for i in range(0, calib.shape[0], batch_size):
            try:
                model(input_ids=calib[i:i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        for layer, fwd in zip(layers, saved):
            if fwd is None:
                del layer.forward
            else:
                layer.forward = fwd
    # one list per distinct kwargs: the first layer with the same key in every batch
    first: dict[tuple, int] = {}
    shared: list[list[dict]] = []
    for i, kws in enumerate(per_layer):
        key = tuple(_kwargs_key(kw) for kw in kws)
        j = first.setdefault(key, i)
        shared.append(kws if j == i else shared[j])
    return list(zip(hidden, shared[0])), shared


def calibration_store(model, layers, calib, batch_size, device, ids, folder=None):
    """Layer 0's inputs for the calibration batches ``ids`` as vq2trt.activations.Activations (in
    ``folder`` when given: spilled to disk) and the kwargs of every layer [layer][batch] on ``device``."""
    from vq2trt.activations import Activations

    wanted = {b: k for k, b in enumerate(ids)}
    store = Activations([{}] * len(ids), ids, folder, device=device)

    def sink(b, h):
        if b in wanted:
            store.put(wanted[b], h.to(device))
    with torch.no_grad():
        _, layer_kwargs = _capture_inputs(model, layers, calib, batch_size, next(model.parameters()).device, sink)
    return store, _kwargs_to_device(layer_kwargs, device)


def _kwargs_to_device(layer_kwargs, device):
    moved: dict[int, list[dict]] = {}
    for kws in layer_kwargs:
        if id(kws) not in moved:
            moved[id(kws)] = [kw for _, kw in _to_device([(torch.empty(0), kw) for kw in kws], device)]
    return [moved[id(kws)] for kws in layer_kwargs]


def _capture_layer0_inputs(model, layers, calib, batch_size, device):
    """Inputs (hidden states and keyword arguments) of decoder layer 0 for each calibration batch."""
    return _capture_inputs(model, layers, calib, batch_size, device)[0]


def _with_kwargs(batches, kwargs):
    """``batches`` [(hidden, kwargs)] with each batch's kwargs replaced by ``kwargs`` [batch]."""
    return [(h, kw) for (h, _), kw in zip(batches, kwargs)]


def _to_device(batches, device):
    def mv(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, tuple):
            return tuple(mv(y) for y in x)
        return x
    return [(h.to(device), {k: mv(v) for k, v in kw.items()}) for h, kw in batches]


def _calibration_inputs(model, layers, calib, batch_size, device):
    """_capture_inputs on ``device``: [(hidden, kwargs of layer 0)] and kwargs [layer][batch], each
    list shared by several layers moved once."""
    with torch.no_grad():
        batches, layer_kwargs = _capture_inputs(model, layers, calib, batch_size, next(model.parameters()).device)
    layer_kwargs = _kwargs_to_device(layer_kwargs, device)
    return [(h.to(device), kw) for (h, _), kw in zip(batches, layer_kwargs[0])], layer_kwargs
