"""The baselines' losses on tiny hand-made cases, checked against values worked out in plain Python.

test_parity.py holds FLAIR to the original implementation's tensors; the baselines have no such fixture, so
here every expected number comes from first principles: closed forms where they are short, otherwise a
straightforward loop over Python floats (no torch op of the code under test). One process (world size 1).
"""

import itertools
import math

import pytest
import torch

from flair_core.losses import sigmoid_loss_sum, softmax_contrastive
from flair_core.methods.clip import ClipLoss, ClipSettings
from flair_core.methods.dreamlip import DreamlipLoss, DreamlipSettings, grouped_embeddings
from flair_core.methods.filip import FilipLoss, FilipSettings, select_tokens, token_similarities


def softplus(x: float) -> float:
    """−log σ(x) is softplus(−x); this is log(1 + eˣ)."""
    return math.log1p(math.exp(x))


def nll(row: list[float], positives: list[int]) -> float:
    """−log(Σ_pos p) for p = softmax(row): cross-entropy, multi-positive when several columns count."""
    exps = [math.exp(v) for v in row]
    return -math.log(sum(exps[j] for j in positives) / sum(exps))


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def close(actual: torch.Tensor, expected: float | list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.detach().double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=atol)


# --- shared primitives --------------------------------------------------------------------------------------


def test_softmax_contrastive_sums_the_positive_probabilities():
    # Row 0: probabilities 1/6, 2/6, 3/6 and positives {1, 2}: −log(5/6). Row 1: one positive, 1/(2 + e²).
    logits = torch.tensor([[0.0, math.log(2), math.log(3)], [0.0, 2.0, 0.0]])
    positive = torch.tensor([[False, True, True], [True, False, False]])
    close(softmax_contrastive(logits, positive), (-math.log(5 / 6) - math.log(1 / (2 + math.exp(2)))) / 2)


def test_sigmoid_loss_sum_signs_by_positive():
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    positive = torch.tensor([[True, False], [False, True]])
    # −log σ(1) − log σ(2) − log σ(−0.5) − log σ(3)
    close(sigmoid_loss_sum(logits, positive), softplus(-1) + softplus(-2) + softplus(0.5) + softplus(-3))


# --- CLIP ---------------------------------------------------------------------------------------------------

# Two images and their two texts, in 2-D. Unnormalised on purpose (the loss normalises): after normalising,
# image 0 = (1, 0), image 1 = (0, 1), text 0 = (1, 0), text 1 = (0.6, 0.8), so cos = [[1, 0.6], [0, 0.8]].
CLIP_OUT = {"image_features": torch.tensor([[2.0, 0.0], [0.0, 0.5]]),
            "text_features": torch.tensor([[3.0, 0.0], [3.0, 4.0]])}


def test_clip_infonce_by_hand():
    s = 2.0  # logits s·cos = [[2, 1.2], [0, 1.6]]; each row/column's positive is its diagonal entry
    terms = ClipLoss(ClipSettings(loss="softmax"))({**CLIP_OUT, "logit_scale": torch.tensor(s)}, None)
    assert set(terms) == {"contrastive"}
    per_image = (softplus(1.2 - 2) + softplus(0 - 1.6)) / 2  # −log(e^a / (e^a + e^b)) = softplus(b − a)
    per_text = (softplus(0 - 2) + softplus(1.2 - 1.6)) / 2
    close(terms["contrastive"], (per_image + per_text) / 2)


def test_clip_sigmoid_by_hand():
    s, bias = 2.0, -1.0  # logits s·cos + b = [[1, 0.2], [−1, 0.6]]; +1 on the diagonal, −1 off it
    loss = ClipLoss(ClipSettings(loss="sigmoid"))
    terms = loss({**CLIP_OUT, "logit_scale": torch.tensor(s), "logit_bias": torch.tensor(bias)}, None)
    assert set(terms) == {"sigmoid"}
    total = softplus(-1) + softplus(0.2) + softplus(-1) + softplus(-0.6)  # −log σ(y·z) = softplus(−y·z)
    close(terms["sigmoid"], total / 2)  # summed over all pairs, divided by the batch
    assert loss.positive_rate(global_batch=8, k=1) == 1 / 8
    assert ClipLoss(ClipSettings(loss="softmax")).positive_rate(global_batch=8, k=1) is None


def test_clip_infonce_gradient_reaches_both_towers_and_the_scale():
    s = 2.0
    out = {k: v.clone().requires_grad_() for k, v in CLIP_OUT.items()}
    scale = torch.tensor(s, requires_grad=True)
    ClipLoss(ClipSettings())({**out, "logit_scale": scale}, None)["contrastive"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in out.values())
    # A row's −log softmax(s·cos)[pos] has d/ds = E_p[cos] − cos[pos]; the loss averages rows, then columns.
    cos = [[1.0, 0.6], [0.0, 0.8]]

    def d_ds(values: list[float], positive: int) -> float:
        p = [math.exp(s * v) for v in values]
        return sum(pi * v for pi, v in zip(p, values, strict=True)) / sum(p) - values[positive]

    rows = [d_ds(cos[i], i) for i in range(2)]
    cols = [d_ds([cos[0][j], cos[1][j]], j) for j in range(2)]
    close(scale.grad, (sum(rows) / 2 + sum(cols) / 2) / 2)


# --- FILIP --------------------------------------------------------------------------------------------------

# Image tokens (I=2, L=2, d=2) and text tokens (T=2, C=3, d=2), all unit vectors. Masked-out text tokens are
# non-zero on purpose and would win a max or change a mean if the mask were ignored.
FILIP_IMAGES = [[[1.0, 0.0], [0.0, 1.0]],
                [[0.6, 0.8], [-1.0, 0.0]]]
FILIP_TEXTS = [[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]],
               [[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]]]
FILIP_MASK = [[True, True, False],
              [True, False, False]]


def late_interaction(images, texts, mask):
    """i2t[i][t]: mean over image tokens of the best unmasked text token; t2i[t][i]: mean over unmasked
    text tokens of the best image token."""
    i2t = [[sum(max(dot(x, y) for y, m in zip(text, keep, strict=True) if m) for x in image) / len(image)
            for text, keep in zip(texts, mask, strict=True)] for image in images]
    t2i = [[sum(max(dot(x, y) for x in image) for y, m in zip(text, keep, strict=True) if m) / sum(keep)
            for image in images] for text, keep in zip(texts, mask, strict=True)]
    return i2t, t2i


def test_filip_token_similarities_by_hand():
    i2t, t2i = token_similarities(torch.tensor(FILIP_IMAGES), torch.tensor(FILIP_TEXTS),
                                  torch.tensor(FILIP_MASK))
    assert i2t.shape == (2, 2) and t2i.shape == (2, 2)  # (images, texts) and (texts, images)
    # image 0 vs text 0: token (1,0) best 1 [(1,0)], token (0,1) best 0.6
    # [(0.8,0.6); the masked (0,1) gives 1]
    close(i2t[0, 0], (1 + 0.6) / 2)
    # text 0 vs image 0: (1,0) best 1, (0.8,0.6) best 0.8; two unmasked tokens, so /2 (not /3)
    close(t2i[0, 0], (1 + 0.8) / 2)
    # text 1 has one unmasked token (0,1): vs image 1 its best is 0.8
    close(t2i[1, 1], 0.8)
    expected_i2t, expected_t2i = late_interaction(FILIP_IMAGES, FILIP_TEXTS, FILIP_MASK)
    close(i2t, expected_i2t)
    close(t2i, expected_t2i)


def test_filip_select_tokens_keeps_the_ceil_fraction_closest_to_the_class_token():
    anchor = torch.tensor([[1.0, 0.0]])
    # similarities to the class token 0, 0.5, −1, 0.75 (values exact in float32)
    tokens = torch.tensor([[[0.0, 1.0], [0.5, 0.5], [-1.0, 0.0], [0.75, 0.25]]])

    def kept(fraction):
        return sorted(map(tuple, select_tokens(tokens, anchor, fraction)[0].tolist()))

    assert kept(0.5) == sorted([(0.75, 0.25), (0.5, 0.5)])
    assert kept(0.3) == sorted([(0.75, 0.25), (0.5, 0.5)])  # ceil(0.3·4) = 2, not round/floor = 1
    assert kept(0.25) == [(0.75, 0.25)]
    assert torch.equal(select_tokens(tokens, anchor, 1.0), tokens)


FILIP_CLASS_TOKENS = [[0.0, 1.0], [-1.0, 0.0]]  # image 0 is closest to its token (0, 1), image 1 to (−1, 0)


def filip_expected(s: float, fraction: float) -> float:
    keep = math.ceil(fraction * len(FILIP_IMAGES[0]))
    images = [sorted(image, key=lambda x, a=a: -dot(x, a))[:keep]
              for image, a in zip(FILIP_IMAGES, FILIP_CLASS_TOKENS, strict=True)]
    i2t, t2i = late_interaction(images, FILIP_TEXTS, FILIP_MASK)
    per_image = sum(nll([s * v for v in i2t[i]], [i]) for i in range(2)) / 2
    per_text = sum(nll([s * v for v in t2i[t]], [t]) for t in range(2)) / 2
    return (per_image + per_text) / 2


def filip_terms(s: float, fraction: float) -> dict[str, torch.Tensor]:
    out = {"image_tokens": torch.tensor(FILIP_IMAGES), "image_features": torch.tensor(FILIP_CLASS_TOKENS),
           "text_tokens": torch.tensor(FILIP_TEXTS), "text_mask": torch.tensor(FILIP_MASK),
           "logit_scale": torch.tensor(s)}
    return FilipLoss(FilipSettings(token_fraction=fraction))(out, None)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_filip_loss_by_hand(fraction):
    terms = filip_terms(3.0, fraction)
    assert set(terms) == {"contrastive"}
    close(terms["contrastive"], filip_expected(3.0, fraction))


def test_filip_loss_skips_padding_columns_past_the_longest_text():
    """Masked columns (the context past every text's end) change neither the loss nor any gradient."""
    torch.manual_seed(0)
    images = torch.randn(3, 5, 4, requires_grad=True)
    texts = torch.randn(3, 6, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)

    def loss(texts, mask):
        out = {"image_tokens": images, "image_features": images[:, 0], "text_tokens": texts,
               "text_mask": mask, "logit_scale": torch.tensor(5.0)}
        return FilipLoss(FilipSettings())(out, None)["contrastive"]

    padded = torch.cat([texts, torch.randn(3, 71, 4)], dim=1)  # garbage in the padding columns
    trimmed_loss = loss(texts[:, :4], mask[:, :4])
    image_grad, text_grad = torch.autograd.grad(trimmed_loss, (images, texts))
    padded_loss = loss(padded, torch.cat([mask, torch.zeros(3, 71, dtype=torch.bool)], dim=1))
    padded_image_grad, padded_text_grad = torch.autograd.grad(padded_loss, (images, texts))
    close(padded_loss, float(trimmed_loss))
    torch.testing.assert_close(padded_image_grad, image_grad)
    torch.testing.assert_close(padded_text_grad, text_grad)


def test_filip_token_fraction_changes_the_loss():
    """Keeping half the image tokens must change the loss in this case (else the 0.5 case above proves
    little)."""
    assert abs(filip_terms(3.0, 1.0)["contrastive"] - filip_terms(3.0, 0.5)["contrastive"]) > 0.01


# --- DreamLIP -----------------------------------------------------------------------------------------------


def test_dreamlip_grouping_by_hand():
    # One image, tokens (1,0), (0.6,0.8), (0,1); two sub-captions (K = 2).
    tokens = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    texts = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    # Text (1,0): similarities 1, 0.6, 0 -> min-max 1, 0.6, 0. Threshold 0.5 keeps tokens 0 and 1 with weights
    # 1 and 0.6: embedding ∝ (1,0) + 0.6·(0.6,0.8) = (1.36, 0.48). Threshold 0.7 keeps token 0 alone.
    # Text (0.8,0.6): similarities 0.8, 0.96, 0.6 -> min-max 5/9, 1, 0. Threshold 0.5 keeps tokens 0 and 1:
    # ∝ (5/9)·(1,0) + (0.6,0.8); threshold 0.58 keeps token 1 alone: (0.6, 0.8).
    close(grouped_embeddings(tokens, texts, k=2, threshold=0.5),
          [unit([1.36, 0.48]), unit([5 / 9 + 0.6, 0.8])])
    close(grouped_embeddings(tokens, texts, k=2, threshold=0.58),
          [unit([1.36, 0.48]), [0.6, 0.8]])
    close(grouped_embeddings(tokens, texts, k=2, threshold=0.7), [[1.0, 0.0], [0.6, 0.8]])
    # Threshold 0 keeps every token with its min-max weight (the least similar one weighs 0 either way).
    close(grouped_embeddings(tokens, texts, k=2, threshold=0.0),
          [unit([1.36, 0.48]), unit([5 / 9 + 0.6, 0.8])])


def test_dreamlip_grouping_pairs_each_text_with_its_own_image():
    # Two images, K = 2, row-major texts: texts 0, 1 belong to image 0, texts 2, 3 to image 1.
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, -0.6]]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # threshold 0.99: each text keeps only its best token of its own image
    close(grouped_embeddings(tokens, texts, k=2, threshold=0.99),
          [[1.0, 0.0], [0.0, 1.0], [0.8, -0.6], [0.6, 0.8]])


B, K = 2, 2
# Unnormalised features (the loss normalises them), 2-D, chosen without symmetries so that swapping rows or
# directions, or reading the sub-captions column-major, changes the numbers.
DREAMLIP_IMAGES = [[1.0, 0.2], [0.3, 1.0]]
DREAMLIP_LONGS = [[2.0, 1.0], [-0.5, 1.5]]
DREAMLIP_TEXTS = [[1.0, 0.5], [0.9, -0.3], [0.2, 1.0], [-0.4, 0.8]]  # row-major: text j is image j // K's
DREAMLIP_TOKENS = [[[1.0, 0.0], [0.5, 0.5], [-0.2, 1.0]],
                   [[0.0, 2.0], [1.0, 1.0], [0.7, -0.7]]]


def dreamlip_expected(s, threshold, long_weight, sub_caption_weight, grouping_weight):
    images = [unit(v) for v in DREAMLIP_IMAGES]
    longs = [unit(v) for v in DREAMLIP_LONGS]
    texts = [unit(v) for v in DREAMLIP_TEXTS]
    terms = {}
    if long_weight:
        i2l = sum(nll([s * dot(images[i], t) for t in longs], [i]) for i in range(B)) / B
        l2i = sum(nll([s * dot(longs[i], x) for x in images], [i]) for i in range(B)) / B
        terms["long"] = long_weight * (i2l + l2i) / 2
    if sub_caption_weight:
        own = [[i * K + k for k in range(K)] for i in range(B)]  # image i's sub-captions, all positives
        i2t = sum(nll([s * dot(images[i], t) for t in texts], own[i]) for i in range(B)) / B
        t2i = sum(nll([s * dot(texts[j], x) for x in images], [j // K]) for j in range(B * K)) / (B * K)
        terms["sub_captions"] = sub_caption_weight * (i2t + t2i) / 2
    if grouping_weight:
        grouped = []
        for j, text in enumerate(texts):
            tokens = [unit(v) for v in DREAMLIP_TOKENS[j // K]]
            sims = [dot(x, text) for x in tokens]
            weights = [(v - min(sims)) / (max(sims) - min(sims)) for v in sims]
            weights = [w if w >= threshold else 0.0 for w in weights]
            grouped.append(unit([sum(w * x[d] for w, x in zip(weights, tokens, strict=True))
                                 for d in range(2)]))
        g2t = sum(nll([s * dot(grouped[j], t) for t in texts], [j]) for j in range(B * K)) / (B * K)
        terms["grouping"] = grouping_weight * g2t
    return terms


def dreamlip_out(s):
    return {"image_features": torch.tensor(DREAMLIP_IMAGES), "long_features": torch.tensor(DREAMLIP_LONGS),
            "text_features": torch.tensor(DREAMLIP_TEXTS), "image_tokens": torch.tensor(DREAMLIP_TOKENS),
            "logit_scale": torch.tensor(s)}


# Min-max weights of the middle patch per text: 0.921, 0.653, 0.903, 0.686 (the others are 0 and 1), so
# 0.67 drops one patch and 0.95 all four.
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.67, 0.95])
def test_dreamlip_terms_by_hand(threshold):
    s = 4.0
    weights = {"long_weight": 0.5, "sub_caption_weight": 2.0, "grouping_weight": 3.0}
    terms = DreamlipLoss(DreamlipSettings(grouping_threshold=threshold, **weights))(dreamlip_out(s), None)
    expected = dreamlip_expected(s, threshold, **weights)
    assert set(terms) == {"long", "sub_captions", "grouping"}
    for name, value in expected.items():
        close(terms[name], value)


def test_dreamlip_threshold_changes_the_grouping_term():
    """The thresholds above select different patches in this case (else the parametrised case proves
    little)."""
    values = [DreamlipLoss(DreamlipSettings(grouping_threshold=t))(dreamlip_out(4.0), None)["grouping"].item()
              for t in (0.0, 0.67, 0.95)]
    assert min(abs(a - b) for a, b in itertools.combinations(values, 2)) > 1e-3


def test_dreamlip_zero_weight_drops_the_term():
    settings = DreamlipSettings(long_weight=0.0, sub_caption_weight=1.0, grouping_weight=0.0)
    terms = DreamlipLoss(settings)(dreamlip_out(4.0), None)
    assert set(terms) == {"sub_captions"}
    close(terms["sub_captions"], dreamlip_expected(4.0, 0.5, 0, 1.0, 0)["sub_captions"])
