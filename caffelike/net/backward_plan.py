"""Which layers and bottoms get a gradient, decided once when a net is built, as Caffe's Net::Init does: drop
backward where nothing reaches a loss, apply force_backward, refuse what Caffe's Backward would abort on, and
let a parameter carry autograd history only where Caffe computes its diff.  `net` is the NetGraph being built.
"""
from __future__ import annotations


def plan_backward(net) -> None:
    """Caffe drops backward for layers that do not reach a loss, then applies force_backward."""
    under_loss: set[str] = set()
    skip: set[str] = set()
    for layer, plan in zip(reversed(net.layer_list), reversed(net.plans)):
        contributes, skip_down = False, True
        for t, w in zip(plan.tops, plan.loss_weights):
            if w != 0 or t in under_loss:
                contributes = True
            if t not in skip:
                skip_down = False
        if plan.need_backward and skip_down:
            plan.need_backward = False
            plan.bottom_need_backward = [False] * len(plan.bottoms)
        if not contributes:
            plan.need_backward = False
        for j, b in enumerate(plan.bottoms):
            if contributes:
                under_loss.add(b)
            else:
                plan.bottom_need_backward[j] = False
            if not plan.bottom_need_backward[j]:
                skip.add(b)
    if net.force_backward:
        for layer, plan in zip(net.layer_list, net.plans):
            plan.need_backward = True
            plan.bottom_need_backward = [nb or layer.allow_force_backward(j)
                                         for j, nb in enumerate(plan.bottom_need_backward)]
            plan.param_propagate_down = [True] * len(plan.param_propagate_down)
    refuse_impossible_gradients(net)
    # A parameter carries autograd history only where Caffe would compute its diff (lr_mult != 0, or
    # force_backward); a shared Parameter does when any of its users does.
    wants: dict[int, bool] = {}
    for layer, plan in zip(net.layer_list, net.plans):
        for p, down in zip(layer.blobs, plan.param_propagate_down):
            wants[id(p)] = wants.get(id(p), False) or (down and not getattr(p, "caffe_frozen", False))
    for p in net.parameters():
        p.requires_grad_(wants.get(id(p), False))

def refuse_impossible_gradients(net) -> None:
    """Caffe's Backward aborts when a layer is asked for a gradient it cannot give (a label, an index, a layer
    without backward); here such a net is refused when it is built, naming the layer, the bottom and why."""
    for layer, plan, lp in zip(net.layer_list, net.plans, net.net_param.layer):
        if not plan.need_backward:
            continue
        for j, needed in enumerate(plan.bottom_need_backward):
            reason = layer.gradient_refusal(j, len(plan.bottoms)) if needed else None
            if reason is None:
                continue
            if lp.propagate_down and lp.propagate_down[j]:
                why = f"propagate_down is true for bottom {j}"
            elif net.force_backward:
                why = "force_backward: true asks every layer for its bottoms' gradients"
            else:
                why = "a layer below it has learnable parameters, so the net needs that gradient"
            layer.fail(f'{reason}: bottom {j} "{plan.bottoms[j]}" cannot get a gradient, but {why}')
