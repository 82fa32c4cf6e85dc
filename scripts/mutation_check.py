"""Break the implementation one rule at a time and check that the test suite notices.

Each mutant is a one-line text substitution in a copy of the package; the suite runs on the copy
(``HYPOTHESIS_PROFILE=dev``, stop at the first failure), the tests most likely to notice first and
then, if those pass, the whole suite. A mutant the suite does not kill is a hole
in the tests, and this script exits non-zero.

Usage::

    python scripts/mutation_check.py            # all mutants
    python scripts/mutation_check.py top-up     # the ones whose name contains "top-up"
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK_CORE = ["tests/test_examples.py", "tests/test_spec.py", "tests/test_errors.py", "tests/test_baselines.py",
              "tests/test_properties.py"]
QUICK_MODELS = ["tests/test_pre_llm_methods.py", "tests/test_sparsevlm.py", "tests/test_models.py", "tests/test_methods.py",
                "tests/test_qwen.py"]
QUICK_REPRODUCE = ["tests/test_reproduce_run.py",
                   "tests/test_reproduce_smoke.py::test_rows_that_do_not_read_the_prior_do_not_depend_on_it",
                   "tests/test_reproduce_smoke.py::test_a_record_of_another_configuration_is_evaluated_again",
                   "tests/test_reproduce_smoke.py::test_two_processes_shard_the_samples_and_give_the_same_table"]

#: name -> (file, text, replacement); the text must occur in the file (every occurrence is replaced)
MUTANTS = {
    "tie-break index descending (reference order)": (
        "d2pruner/spec.py", "np.lexsort((np.arange(s.shape[-1]), -s))", "np.lexsort((-np.arange(s.shape[-1]), -s))"),
    "tie-break unstable (fast order)": (
        "d2pruner/spec.py", "descending=True, stable=True", "descending=True, stable=False"),
    "edge rule drops the spatial term": (
        "d2pruner/spec.py", "return (1.0 - w) * cosine + w * adjacent >", "return (1.0 - w) * cosine + 0.0 * adjacent >"),
    "edge rule >= instead of > (w = 0)": (
        "d2pruner/spec.py", "return cosine > float(config.sim_threshold)", "return cosine >= float(config.sim_threshold)"),
    "reference graph skips pairs of consecutive nodes": (
        "d2pruner/reference/graph.py", "np.triu(edge[np.ix_(nodes, nodes)], k=1)", "np.triu(edge[np.ix_(nodes, nodes)], k=2)"),
    "fast graph ignores space for w < 0.6": (
        "d2pruner/fast/graph.py", "if config.spatial_weight == 0:", "if config.spatial_weight < 0.6:"),
    "spatial radius off by one": (
        "d2pruner/spec.py", "(abs(row_a - row_b) <= radius)", "(abs(row_a - row_b) < radius)"),
    "pivot count rounds up": ("d2pruner/spec.py", "return math.floor(exact_ratio(pivot_ratio)", "return math.ceil(exact_ratio(pivot_ratio)"),
    "pivot count in binary floats": (
        "d2pruner/spec.py", "return math.floor(exact_ratio(pivot_ratio) * int(n_keep))",
        "return math.floor(float(pivot_ratio) * int(n_keep))"),
    "budget ratio rounds down": ("d2pruner/spec.py", "* n_tokens + Fraction(1, 2)", "* n_tokens"),
    "reference debias drops eps": ("d2pruner/reference/debias.py", "attn[i] / (prior[i] + eps)", "attn[i] / prior[i]"),
    "reference MIS forgets neighbours": (
        "d2pruner/reference/mis.py", "        unavailable.update(graph.neighbors(node))\n", ""),
    "reference MIS ignores pre-selected pivots": (
        "d2pruner/reference/mis.py", "            unavailable.update(graph.neighbors(s))", "            pass"),
    "reference top-up takes the lowest-ranked": (
        "d2pruner/reference/select.py", "topup = [i for i in candidates if", "topup = [i for i in reversed(candidates) if"),
    "fast top-up one short": (
        "d2pruner/fast/select.py", "dim=1) <= deficit[:, None])", "dim=1) < deficit[:, None])"),
    "fast MIS priority reversed": (
        "d2pruner/fast/mis.py", "(rank[:, None, :] < rank[:, :, None])", "(rank[:, None, :] > rank[:, :, None])"),
    "fast MIS stops one early": ("d2pruner/fast/mis.py", "(settled < limit)", "(settled < limit - 1)"),
    "fast MIS keeps one too many": ("d2pruner/fast/mis.py", "dim=1) <= limit[:, None])", "dim=1) <= limit[:, None] + 1)"),
    "models: rotary cos/sin not cut with the tokens": (
        "d2pruner/models/cutting.py", "(gather3(orig[\"cos\"]), gather3(orig[\"sin\"]))",
        "(orig[\"cos\"][:, -new_len:].expand(b, -1, -1), orig[\"sin\"][:, -new_len:].expand(b, -1, -1))"),
    "models: left-padding dummies visible as keys": (
        "d2pruner/models/cutting.py", "    visible = visible & slot_valid[:, None, :]\n", ""),
    "models: attention row ignores the padding mask": (
        "d2pruner/models/attention.py", "scores = _apply_mask(scores, attention_mask[:, :, -1:, :])", "scores = scores"),
    "models: decoding mask columns misaligned with the cache": (
        "d2pruner/models/cutting.py", "cols = torch.cat([index, new_cols.expand(b, -1)], dim=1)",
        "cols = torch.cat([index.roll(1, dims=1), new_cols.expand(b, -1)], dim=1)"),
    "baselines: DPP forgets the Cholesky update": (
        "d2pruner/methods/cdpruner.py", "residual = residual - e * e", "residual = residual - 0 * e"),
    "baselines: DivPrune max-max instead of max-min": (
        "d2pruner/methods/divprune.py", "min_dist = torch.minimum(min_dist,", "min_dist = torch.maximum(min_dist,"),
    "baselines: MMR without the redundancy term": (
        "d2pruner/methods/mmr.py", "score = lam * imp - (1.0 - lam) * max_sim", "score = lam * imp - 0.0 * max_sim"),
    "baselines: DART pivots by the smallest key norms": (
        "d2pruner/methods/dart.py", "img_piv = rank_order(key_norms.double())", "img_piv = rank_order(-key_norms.double())"),
    "baselines: DART pivots walked in list order, not the public code's set order": (
        "d2pruner/methods/dart.py", "return [turn[p] for p in list(set(walk))]", "return [turn[p] for p in walk]"),
    "baselines: DART pivots walked by ascending position": (
        "d2pruner/methods/dart.py", "return [turn[p] for p in list(set(walk))]", "return [turn[p] for p in sorted(set(walk))]"),
    "baselines: DART method defaults to the key-norm pivot order": (
        "d2pruner/methods/dart.py", '    pivot_order: str = "public"\n', '    pivot_order: str = "norm"\n'),
    "models: DART pivot positions counted with the left padding": (
        "d2pruner/models/probes.py",
        "real = index if handle.mask2d is None else handle.mask2d[i].long().cumsum(0)[index] - 1", "real = index"),
    "models: pre-LLM pruning keeps the original positions": (
        "d2pruner/models/cutting.py", "new_pos = (pos_ids - dropped_before).clamp(min=0).gather(1, index)",
        "new_pos = pos_ids.gather(1, index)"),
    "models: progressive decoding reuses the first stage's mask": (
        "d2pruner/models/handle.py", "stage = max(j for j, s in enumerate(self.stage_layers) if s <= layer_idx)", "stage = 0"),
    "models: progressive stage keeps the previous stage's hidden states unaligned": (
        "d2pruner/models/cutting.py", "src = slot_of.gather(1, index)  # (B, L') current slot", "src = index.clamp(max=n_cur - 1)  # (B, L') current slot"),
    "fast scores in float32": ("d2pruner/fast/debias.py", "torch.float64", "torch.float32"),
    "baselines: VisionZip dominant by the lowest [CLS] attention": (
        "d2pruner/methods/visionzip.py", "dominant = torch.sort(rank_order(cls_attention.to(torch.float64))",
        "dominant = torch.sort(rank_order(-cls_attention.to(torch.float64))"),
    "baselines: VisionZip contextual = target + mean(members) (the public code's sum)": (
        "d2pruner/methods/visionzip.py", "out.append(features[members].mean(dim=0))",
        "out.append(features[members[:1]].sum(dim=0) + features[members[1:]].mean(dim=0).nan_to_num())"),
    "models: merged tokens not written into their slots": (
        "d2pruner/models/cutting.py", "h[i, new_slot[orig]] = features.to(device=device, dtype=h.dtype)", "pass"),
    "models: [CLS] attention of the last patch instead of [CLS]": (
        "d2pruner/models/attention.py", "q = attn.q_proj(hidden_states[:, :1])", "q = attn.q_proj(hidden_states[:, -1:])"),
    "methods: CDPruner relevance never negated": (
        "d2pruner/methods/cdpruner.py", "return -raw if negate_relevance else raw", "return raw"),
    "clip_text: relevance from the first text segment only": (
        "d2pruner/models/clip_text.py", "return (img @ txt.T).mean(dim=1)", "return (img @ txt[:1].T).mean(dim=1)"),
    "baselines: SparseVLM raters below the mean": (
        "d2pruner/methods/sparsevlm.py", "raters = rel > rel.mean()", "raters = rel < rel.mean()"),
    "baselines: SparseVLM recycles the worst dropped tokens": (
        "d2pruner/methods/sparsevlm.py", "candidates = dropped[:_candidates(len(dropped))]",
        "candidates = dropped.flip(0)[:_candidates(len(dropped))]"),
    "models: a decoded image-token id taken for an image": (
        "d2pruner/models/handle.py", "if input_ids is not None and not decoding else None", "if input_ids is not None else None"),
    "models: DART text pivots from every non-visual token (BOS, system prompt)": (
        "d2pruner/models/probes.py", "text = ctx.cur_valid[i] & (ctx.cur_index[i] > pos.max())",
        "text = ctx.cur_valid[i] & ~torch.isin(ctx.cur_index[i], pos)"),
    "methods: PyramidDrop scores with the layer before each stage": (
        "d2pruner/methods/pyramiddrop.py", "    scores_at_stage_layer = True\n", "    scores_at_stage_layer = False\n"),
    "adapter: a padded duplicate request answered twice": (
        "reproduce/adapter.py", "elif key in first:", "elif False:"),
    "records: a record of another configuration reused": (
        "reproduce/records.py", 'if record.get("cell") == json.loads(json.dumps(cell)):', "if True:"),
    "records: answers beyond --limit counted": (
        "reproduce/records.py", 'if limit is None or r["doc_id"] < limit}', "if True}"),
    "records: another run's answers not set aside": (
        "reproduce/records.py", "        if head == want:\n            continue", "        if True:\n            continue"),
    "records: the prior in the fingerprint of rows that do not read it": (
        "reproduce/records.py", "reads_prior = uses_prior(method) and prior", "reads_prior = prior"),
    "models: pre-encoded images after a cache taken for decoding": (
        "d2pruner/models/handle.py", 'and not kwargs.get("mm_encoder_outputs"))', "and True)"),
    "models: rater rows ignore the attention mask": (
        "d2pruner/models/attention.py", "scores = _apply_mask(scores, attention_mask[:, :, queries, :])", "scores = scores"),
    "qwen: positions renumbered before the LLM": (
        "d2pruner/models/qwen_vl.py", "    renumber_before_llm = False\n", "    renumber_before_llm = True\n"),
    "qwen: DeepStack additions dropped after the cut": (
        "d2pruner/models/qwen_vl.py", "hidden[visual, :] = hidden[visual, :] + embeds[rows]", "hidden[visual, :] = hidden[visual, :]"),
    "qwen: DeepStack rows not following the kept tokens": (
        "d2pruner/models/qwen_vl.py", "rows = rank.gather(1, index)[visual]", "rows = rank.gather(1, index)[visual].sort().values.flip(0)"),
    "qwen: a manual decoding step numbered after the shortened cache": (
        "d2pruner/models/qwen_vl.py", "text = torch.arange(start, start + q, device=deltas.device)[None]",
        "text = torch.arange(start - 1, start - 1 + q, device=deltas.device)[None]"),
    "qwen: one view for a whole video": (
        "d2pruner/models/qwen_vl.py", "layouts += [TokenLayout.grid(h, w)] * t", "layouts += [TokenLayout.grid(h * t, w)]"),
    "compat: the hooks never find the KV cache": (
        "d2pruner/compat.py", "    return cache\n", "    return None\n"),
    "compat: the cache argument ignores the installed version": (
        "d2pruner/compat.py", 'return "cache" if version >= _CACHE_RENAMED else "past_key_values"', 'return "cache"'),
    "fast graph decides near-threshold pairs in float32": (
        "d2pruner/fast/graph.py", "        if bi.numel():\n", "        if False:\n"),
    "fast graph not mirrored (upper triangle only)": (
        "d2pruner/fast/graph.py", "        graph[:, lo:, lo:hi] |= edge.transpose(1, 2)", "        pass"),
    "reference graph decides near-threshold pairs in float64": (
        "d2pruner/reference/graph.py", "edge[i, j] = edge[j, i] = cosine_exceeds(f[i], f[j], thresholds[int(spat[i, j])])", "pass"),
    "exact cosine rule >= instead of >": (
        "d2pruner/spec.py", "return lhs > 0 and lhs * lhs > rhs_sq", "return lhs > 0 and lhs * lhs >= rhs_sq"),
    "rows not scaled before their norms": (
        "d2pruner/fast/graph.py", "            x = x * torch.exp2((-e).clamp(max=top).to(dtype))[..., None]", "            pass"),
    "compat: no floor": (
        "d2pruner/compat.py", "    if version < FLOOR:", "    if False:"),
    "records: the output lock never refuses a second run": (
        "reproduce/records.py", "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass"),
    "run: a --rows subset drops the cells earlier runs recorded": (
        "reproduce/run.py", "            if record is not None:\n                earlier[", "            if False:\n                earlier["),
    "convert: key and value heads of a KV group swapped": (
        "d2pruner/models/convert_internvl.py", "k = per_group[:, groups].reshape", "k = per_group[:, groups + 1].reshape"),
    "convert: InternLM2's rope scaling dropped": (
        "d2pruner/models/convert_internvl.py", 'return {"rope_type": kind, "factor": float(scaling["factor"]), "rope_theta": theta}',
        'return {"rope_type": "default", "rope_theta": theta}'),
    "convert: finished shards written again": (
        "d2pruner/models/convert_internvl.py", 'if name in record["shards"] and (out / target).exists():', "if False:"),
    "internvl3: the family chosen by model_type alone": (
        "d2pruner/models/family.py", "return not self.text_model_types or getattr(", "return True or getattr("),
    "llava_next: newline tokens offered as visual tokens": (
        "d2pruner/models/llava_next.py", "self.side ** 2 + r * (self.cols + 1) + c])", "self.side ** 2 + r * self.cols + c])"),
    "llava_next: the canvas margins not skipped in the vision records": (
        "d2pruner/models/llava_next.py", "top, left = (self.crop_rows * s - self.rows) // 2, (self.crop_cols * s - self.cols) // 2",
        "top, left = 0, 0"),
    "prior grid: resampled to a view by the wrong rule": (
        "d2pruner/models/prior/grid.py", "view = resample_grid(square, rows, cols, resampling)",
        'view = resample_grid(square, rows, cols, "nearest")'),
    "prior grid: views not scaled to mean 1": (
        "d2pruner/models/prior/grid.py", "out.append(block / block.mean())", "out.append(block)"),
    "llava_next: a pre-encoded image's canvas one column wider": (
        "d2pruner/models/llava_next.py", "cols = (n - side * side) // rows - 1", "cols = (n - side * side) // rows"),
}


def run_mutant(name: str, path: str, old: str, new: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        dst = pathlib.Path(tmp) / "repo"
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".ci-venv*", ".git", "__pycache__", ".hypothesis"))
        target = dst / path
        text = target.read_text()
        if old not in text:
            raise SystemExit(f"mutant {name!r}: {old!r} not found in {path}")
        target.write_text(text.replace(old, new))
        env = {**os.environ, "HYPOTHESIS_PROFILE": "dev", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(dst)}
        # The tests most likely to notice first (seconds), then, if they all pass, the whole suite.
        quick = (["tests/test_qwen.py"] if path == "d2pruner/models/qwen_vl.py" else
                 ["tests/test_llava_next.py"] if path == "d2pruner/models/llava_next.py" else
                 ["tests/test_qwen.py", "tests/test_llava_next.py"] if path == "d2pruner/models/prior/grid.py" else
                 QUICK_MODELS if path.startswith("d2pruner/models/") else
                 ["tests/test_compat.py"] + QUICK_MODELS if path == "d2pruner/compat.py" else
                 QUICK_CORE + QUICK_MODELS if path.startswith("d2pruner/methods/") else
                 QUICK_REPRODUCE if path.startswith("reproduce/") else QUICK_CORE)
        for targets in (quick, []):
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-rf", *targets],
                                  cwd=dst, env=env, capture_output=True, text=True)
            failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
            if proc.returncode != 0:
                return True, failed[0] if failed else proc.stdout.strip().splitlines()[-1]
        return False, proc.stdout.strip().splitlines()[-1]


def main(argv: list[str]) -> int:
    chosen = {k: v for k, v in MUTANTS.items() if not argv or any(a in k for a in argv)}
    survived = 0
    for name, (path, old, new) in chosen.items():
        t0 = time.perf_counter()
        killed, by = run_mutant(name, path, old, new)
        survived += not killed
        print(f"{'killed  ' if killed else 'SURVIVED'} {name:50s} {time.perf_counter() - t0:5.1f}s  {by}", flush=True)
    print(f"{len(chosen) - survived}/{len(chosen)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
