"""Generation: chunkwise prefill then steps gives the same tokens as stepping through the prompt,
batched prompts of different lengths equal single runs, memory does not grow, sampling options."""
import pytest
import torch

from recurlm.eval.generate import SamplingConfig, generate, prefill, sample


def step_only_greedy(model, prompt, n):
    state = model.init_state(1)
    for token in prompt:
        logits, state = model.step(torch.tensor([token]), state)
    out = []
    for _ in range(n):
        token = logits.argmax(-1)
        out.append(int(token))
        logits, state = model.step(token, state)
    return out


@pytest.mark.parametrize("family", ["hgrn2", "griffin", "rwkv7"])
def test_prefill_then_step_equals_step_only(make_model, family):
    model = make_model(family, seed=1)
    prompt = [1] + torch.randint(4, 300, (9,)).tolist()
    expected = step_only_greedy(model, prompt, 8)
    for chunk in (0, 4):
        got = generate(model, [prompt], SamplingConfig(max_new_tokens=8), eos_id=-1, prefill_chunk=chunk)[0]
        assert got.tokens == expected and got.finish_reason == "length"


def test_batched_prompts_of_different_lengths_equal_single_runs(make_model):
    model = make_model("hgrn2", seed=2)
    prompts = [[1] + torch.randint(4, 300, (n,)).tolist() for n in (3, 11, 6)]
    batched = generate(model, prompts, SamplingConfig(max_new_tokens=6), eos_id=-1)
    for prompt, out in zip(prompts, batched):
        assert out.tokens == generate(model, [prompt], SamplingConfig(max_new_tokens=6), eos_id=-1)[0].tokens


def test_state_memory_is_constant_in_generated_length(make_model):
    model = make_model("rwkv7")
    sizes, shapes = [], []

    def record(state):
        sizes.append(state.nbytes())
        shapes.append(sorted((k, tuple(v.shape)) for layer in state.layers if layer for k, v in layer.items()))

    generate(model, [[1, 5, 6, 7]], SamplingConfig(max_new_tokens=20), eos_id=-1, on_step=record)
    assert len(sizes) == 19  # no step after the last token
    assert len(set(sizes)) == 1 and sizes[0] == model.state_bytes()
    assert all(s == shapes[0] for s in shapes)
    _, state = prefill(model, [[1] + [5] * 200])
    assert state.nbytes() == sizes[0]  # a 50x longer prompt leaves the same state


def test_sampling_options():
    logits = torch.tensor([[0.0, 3.0, 2.9, -5.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample(logits, SamplingConfig(temperature=1.0, top_k=1), gen).tolist()) == {1}
    assert set(sample(logits, SamplingConfig(temperature=1.0, top_k=2), gen).tolist()) == {1, 2}
    assert set(sample(logits, SamplingConfig(temperature=1.0, top_p=0.3), gen).tolist()) == {1}
    assert set(sample(logits, SamplingConfig(temperature=1.0, top_p=0.9), gen).tolist()) == {1, 2}
    assert 3 in set(sample(logits, SamplingConfig(temperature=100.0), gen).tolist())
    assert sample(logits[:1], SamplingConfig(), None).tolist() == [1]


def test_seeded_sampling_is_reproducible_and_stops(make_model, tokenizer):
    model = make_model("hgrn2")
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=3)
    prompt = [tokenizer.bos_id] + tokenizer.encode("mqar: ab=123 |")
    a = generate(model, [prompt], cfg, tokenizer=tokenizer)[0]
    assert a.tokens == generate(model, [prompt], cfg, tokenizer=tokenizer)[0].tokens
    full = generate(model, [prompt], SamplingConfig(max_new_tokens=16), tokenizer=tokenizer, eos_id=-1)[0]
    stop = full.text[5:7]
    cut = generate(model, [prompt], SamplingConfig(max_new_tokens=16), tokenizer=tokenizer, eos_id=-1, stop=[stop])[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)
    assert len(cut.tokens) < len(full.tokens)
    streamed = []
    generate(model, [prompt], SamplingConfig(max_new_tokens=5), eos_id=-1, on_token=lambda r, t: streamed.append(t))
    assert streamed == full.tokens[:5]
