import math

import pytest
import torch

from face_mogle.models.mogle import MoGLE, read_mogle_state_dict


def reference(m: MoGLE, x, noisy, t):
    """DESIGN §2 written out from the module's own parameters."""
    P = dict(m.named_parameters())

    def lin(name, v):
        return v @ P[name + ".weight"].T + P[name + ".bias"]

    def expert(prefix, v):
        return lin(prefix + ".net.2", torch.relu(lin(prefix + ".net.0", v)))

    half = 32
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    arg = t[:, None].float() * freqs[None]
    sinus = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)  # cos first
    temb = lin("gating.timestep_embedding.linear_2", torch.nn.functional.silu(lin("gating.timestep_embedding.linear_1", sinus)))
    fused = x[:, 0] + lin("gating.noise_proj", noisy) + temb[:, None]
    logits = lin("gating.gate.2", torch.relu(lin("gating.gate.0", fused)))
    w = torch.softmax(logits, dim=-1)  # [B, N, 20]
    outs = [expert("global_expert", x[:, 0])] + [expert(f"local_experts.{i}", x[:, i + 1]) for i in range(19)]
    out = sum(w[..., e : e + 1] * outs[e] for e in range(20))
    return out, w, outs


@pytest.fixture()
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 20, 16, 64, generator=g), torch.randn(2, 16, 64, generator=g), torch.rand(2, generator=g)


def test_forward_matches_formula(inputs):
    torch.manual_seed(1)
    m = MoGLE()
    x, noisy, t = inputs
    out = m(x, noisy, t)
    ref, w, _ = reference(m, x, noisy, t)
    assert out.shape == (2, 16, 64)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.last_gate_weights, w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m.last_gate_weights.sum(-1), torch.ones(2, 16), atol=1e-6, rtol=0)


def test_ablations(inputs):
    x, noisy, t = inputs
    torch.manual_seed(2)
    full = MoGLE()
    _, w, outs = reference(full, x, noisy, t)

    no_gate = MoGLE(has_gating=False)
    no_gate.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("gating")})
    torch.testing.assert_close(no_gate(x, noisy, t), sum(outs), atol=1e-5, rtol=1e-5)
    assert no_gate.last_gate_weights is None

    scalar = MoGLE(scalar_gating=True)
    scalar.load_state_dict(full.state_dict())
    wm = w.mean(dim=1, keepdim=True)
    torch.testing.assert_close(scalar(x, noisy, t), sum(wm[..., e : e + 1] * outs[e] for e in range(20)), atol=1e-5, rtol=1e-5)

    identity = MoGLE(has_expert=False)
    identity.gating.load_state_dict(full.gating.state_dict())
    expected = torch.einsum("bend,bne->bnd", x, w)
    torch.testing.assert_close(identity(x, noisy, t), expected, atol=1e-5, rtol=1e-5)
    assert not any(k.startswith(("global_expert", "local_experts")) for k in identity.state_dict())


def official_keys():
    keys = {}
    for prefix in ["global_expert"] + [f"local_experts.{i}" for i in range(19)]:
        keys.update({f"{prefix}.net.0.weight": (32, 64), f"{prefix}.net.0.bias": (32,),
                     f"{prefix}.net.2.weight": (64, 32), f"{prefix}.net.2.bias": (64,)})
    for name in ["timestep_embedding.linear_1", "timestep_embedding.linear_2", "noise_proj", "gate.0"]:
        keys.update({f"gating.{name}.weight": (64, 64), f"gating.{name}.bias": (64,)})
    keys.update({"gating.gate.2.weight": (20, 64), "gating.gate.2.bias": (20,)})
    return keys


def test_official_layout_loads_strictly(tmp_path, inputs):
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(shape, generator=g).to(torch.bfloat16) for k, shape in official_keys().items()}
    torch.save(state, tmp_path / "mogle.pt")
    m = MoGLE()
    assert set(m.state_dict()) == set(state)  # names are the official ones, exactly
    m.load(tmp_path / "mogle.pt")
    for k, v in state.items():
        assert torch.equal(m.state_dict()[k], v.float())
    # ours round-trips through safetensors to identical outputs
    x, noisy, t = inputs
    m.save(tmp_path / "mogle.safetensors")
    m2 = MoGLE()
    m2.load(tmp_path / "mogle.safetensors")
    assert torch.equal(m(x, noisy, t), m2(x, noisy, t))


class Payload:
    pass


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"obj": Payload()}, tmp_path / "mogle.pt")
    with pytest.raises(ValueError, match="plain state dict"):
        read_mogle_state_dict(tmp_path / "mogle.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_mogle_state_dict(tmp_path / "missing.pt")


def test_wrong_shape_input_is_clear():
    with pytest.raises(ValueError, match=r"\[B, 20, N, D\]"):
        MoGLE()(torch.zeros(1, 19, 4, 64), torch.zeros(1, 4, 64), torch.zeros(1))


def test_expert_subsets(inputs):
    x, noisy, t = inputs
    torch.manual_seed(4)
    full = MoGLE()
    _, w, outs = reference(full, x, noisy, t)
    for experts, keep in (("global", [0]), ("local", list(range(1, 20)))):
        m = MoGLE(experts=experts)
        m.load_state_dict(full.state_dict())  # same parameter names: the subset is not saved
        sub = torch.softmax(torch.log(w[..., keep]), dim=-1)  # the gate renormalised over the subset
        expected = sum(sub[..., k : k + 1] * outs[e] for k, e in enumerate(keep))
        torch.testing.assert_close(m(x, noisy, t), expected, atol=1e-5, rtol=1e-4)
        assert torch.all(m.last_gate_weights[..., [e for e in range(20) if e not in keep]] == 0)
        summed = MoGLE(experts=experts, has_gating=False)
        summed.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("gating")})
        torch.testing.assert_close(summed(x, noisy, t), sum(outs[e] for e in keep), atol=1e-5, rtol=1e-5)


def test_gate_global_prior_sets_the_starting_point_only(inputs):
    x, noisy, t = inputs
    torch.manual_seed(0)
    plain = MoGLE()
    torch.manual_seed(0)
    biased = MoGLE(gate_global_prior=0.9)
    plain(x, noisy, t)
    biased(x, noisy, t)
    # ~90% of every token's weight starts on the global expert (the official init: ~1/20)
    assert biased.last_gate_weights[..., 0].mean() == pytest.approx(0.9, abs=0.03)
    assert plain.last_gate_weights[..., 0].mean() < 0.2
    # the same module and formula: only the last gate bias differs, and the output follows it
    out, w, _ = reference(biased, x, noisy, t)
    assert torch.allclose(biased(x, noisy, t), out, atol=1e-5) and torch.allclose(biased.last_gate_weights, w, atol=1e-6)
    diff = [n for (n, a), (_, b) in zip(plain.state_dict().items(), biased.state_dict().items()) if not torch.equal(a, b)]
    assert diff == ["gating.gate.2.bias"]
    with pytest.raises(ValueError, match="gate_global_prior"):
        MoGLE(gate_global_prior=1.0)
