"""Meta-training loop, checkpoints, exact resume after a real kill, and bad input."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.checkpoint import load_checkpoint
from matmeta.cli.main import main
from matmeta.errors import CheckpointError, ConvergenceError, InputError
from matmeta.meta import (
    EpisodeSampler,
    Family,
    MetaSettings,
    MetaTrainSettings,
    adapt_and_predict,
    load_meta,
    meta_train,
)
from matmeta.models._mlp import MLP
from tests.helpers import ROOT, assert_tree_close

F64 = torch.float64


def _families(n=6, size=12, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(size, 2, generator=gen, dtype=dtype)
        a = torch.randn(2, generator=gen, dtype=dtype)
        out.append(Family(f"fam{i}", x, x @ a + 0.1 * i))
    return out


def _toy_table(path: Path, n_fam=8, size=15) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_fam):
        a, b = rng.normal(size=2)
        for _ in range(size):
            x1, x2 = rng.normal(size=2)
            rows.append({"family": f"F{i}", "x1": x1, "x2": x2, "y": a * x1 + b * x2 + i})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_checkpoint_records_everything_needed_to_adapt(tmp_path):
    model = MLP(2, (8,), dtype="float64")
    fams = _families()
    s = MetaSettings("metasgd", inner_steps=2, inner_lr=0.05, eval_inner_steps=4)
    res = meta_train(model, fams[:4], fams[4:], settings=s,
                     train=MetaTrainSettings(steps=6, meta_batch=3, k_shot=3, q_query=4,
                                             checkpoint_every=2, val_every=3),
                     out=tmp_path / "m.pt", progress=False,
                     extra={"featurizer": None, "target_transform": {"kind": "identity"}})
    ck = load_meta(tmp_path / "m.pt")
    assert ck.step == 6 and ck.inner["steps"] == 4 and ck.inner["train_steps"] == 2
    assert set(ck.inner["per_param_lr"]) == set(ck.params)
    assert all(bool((r > 0).all()) for r in ck.inner["per_param_lr"].values())
    assert ck.extra["target_transform"] == {"kind": "identity"}
    assert [h["step"] for h in ck.history] == list(range(1, 7))
    assert "val_loss" in ck.history[2] and "val_loss" not in ck.history[0]
    assert_tree_close(ck.meta_params, res.meta_params, rtol=0, atol=0)
    # adapting from the file alone equals adapting from the in-memory result
    task = EpisodeSampler(fams[4:], 3, 4, 1, seed=3).sample()[0]
    a = adapt_and_predict(ck.model, ck.meta_params, task.support, task.query.inputs, ck.settings)
    b = adapt_and_predict(model, res.meta_params, task.support, task.query.inputs, res.settings)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_in_process_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    model = MLP(2, (8,), dtype="float64")
    fams = _families()
    tr = MetaTrainSettings(steps=8, meta_batch=3, k_shot=3, q_query=4, schedule="cosine",
                           checkpoint_every=3)
    kw = dict(settings=MetaSettings("maml", 2, 0.05), train=tr, progress=False)
    full = meta_train(model, fams, **kw)
    original = EpisodeSampler.sample_indices
    calls = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 5:  # meta-step 5, after the checkpoint of meta-step 3
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(EpisodeSampler, "sample_indices", interrupted)
    with pytest.raises(KeyboardInterrupt):
        meta_train(model, fams, out=tmp_path / "r.pt", **kw)
    monkeypatch.setattr(EpisodeSampler, "sample_indices", original)
    assert load_checkpoint(tmp_path / "r.pt", kind="meta")["step"] == 3
    resumed = meta_train(model, fams, out=tmp_path / "r.pt", resume=True, **kw)
    assert_tree_close(resumed.meta_params, full.meta_params, rtol=0, atol=0)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    data = _toy_table(tmp_path / "toy.csv")
    common = ["meta-train", "--data", str(data), "--model", "mlp", "--algorithm", "maml",
              "--target", "y", "--features", "x1,x2", "--hidden", "8", "--k-shot", "3",
              "--q-query", "4", "--meta-batch", "4", "--inner-steps", "2", "--steps", "100",
              "--val-families", "0.25", "--val-every", "100", "--val-tasks", "4",
              "--device", "cpu", "--threads", "1", "--seed", "3", "--no-progress",
              "--checkpoint-every", "10"]
    killed = tmp_path / "killed.pt"
    # a real SIGKILL, sent by the child to itself before meta-step 25 (test-only hook in
    # matmeta.meta._train): a kill from outside could come after a fast run had finished
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATMETA_TEST_KILL_AT_STEP": "25"}
    proc = subprocess.run([sys.executable, "-m", "matmeta", *common, "--out", str(killed)],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # meta-steps 21-24 were done and lost: the resume replays them from the checkpoint of 20
    step_at_kill = load_checkpoint(killed, kind="meta")["step"]
    assert step_at_kill == 20
    # the resumed run may as well be in this process: the kill above was real
    assert main([*common, "--out", str(killed), "--resume"]) == 0
    straight = tmp_path / "straight.pt"
    assert main([*common, "--out", str(straight)]) == 0
    a, b = load_checkpoint(killed, kind="meta"), load_checkpoint(straight, kind="meta")
    assert a["step"] == b["step"] == 100
    assert_tree_close(a["meta_params"], b["meta_params"], rtol=0, atol=0)
    assert a["history"] == b["history"]


def test_nan_loss_stops_naming_task_and_step_and_keeps_the_last_checkpoint(tmp_path):
    model = MLP(2, (4,), dtype="float64")
    fams = _families(3)
    out = tmp_path / "n.pt"
    s = MetaSettings("maml", 1, 0.05)
    meta_train(model, fams, settings=s, out=out, progress=False,
               train=MetaTrainSettings(steps=2, meta_batch=2, k_shot=3, q_query=4))
    before = out.read_bytes()
    bad = Family("poisoned", fams[0].inputs, torch.full_like(fams[0].y, float("nan")))
    with pytest.raises(ConvergenceError) as err:
        meta_train(model, [bad], settings=s, out=out, resume=True, progress=False,
                   train=MetaTrainSettings(steps=5, meta_batch=2, k_shot=3, q_query=4))
    msg = str(err.value)
    assert "meta-step 3" in msg and "task 0" in msg and "'poisoned'" in msg and "\n" not in msg
    assert "member" not in msg  # (a single model: no member named)
    assert "(meta-step 2) is kept" in msg
    assert out.read_bytes() == before


def test_resume_refuses_a_checkpoint_of_another_model_or_featurizer(tmp_path):
    fams = _families(3)
    out = tmp_path / "c.pt"
    tr = MetaTrainSettings(steps=1, meta_batch=2, k_shot=3, q_query=4)
    meta_train(MLP(2, (4,), dtype="float64"), fams, train=tr, out=out, progress=False,
               extra={"featurizer": {"cutoff": 6.0}})
    before = out.read_bytes()
    with pytest.raises(CheckpointError, match="cannot resume: it holds a 'mlp' model"):
        meta_train(MLP(2, (5,), dtype="float64"), fams, train=tr, out=out, resume=True,
                   progress=False, extra={"featurizer": {"cutoff": 6.0}})
    with pytest.raises(CheckpointError, match="featurizer"):
        meta_train(MLP(2, (4,), dtype="float64"), fams, train=tr, out=out, resume=True,
                   progress=False, extra={"featurizer": {"cutoff": 5.0}})
    with pytest.raises(CheckpointError, match="'maml', this run asks for 'reptile'"):
        meta_train(MLP(2, (4,), dtype="float64"), fams, train=tr, out=out, resume=True,
                   progress=False, settings=MetaSettings("reptile"),
                   extra={"featurizer": {"cutoff": 6.0}})
    assert out.read_bytes() == before


def _resume_base():
    return dict(settings=MetaSettings("maml", 2, 0.05),
                train=MetaTrainSettings(steps=2, meta_batch=2, k_shot=3, q_query=4, seed=1))


@pytest.mark.parametrize("change", [
    {"inner_steps": 3}, {"inner_lr": 0.1}, {"k_shot": 2}, {"meta_batch": 3}, {"outer_lr": 0.01},
    {"schedule": "cosine"}, {"seed": 2}, {"q_query": 3}, {"clip": 1.0},
])
def test_resume_refuses_changed_settings_naming_the_key_and_both_values(tmp_path, change):
    fams = _families(3)
    out = tmp_path / "s.pt"
    base = _resume_base()
    meta_train(MLP(2, (4,), dtype="float64"), fams, out=out, progress=False, **base)
    before = out.read_bytes()
    (key, value), = change.items()
    settings, train = base["settings"], base["train"]
    if hasattr(settings, key):
        was = getattr(settings, key)
        settings = MetaSettings.from_dict({**settings.to_dict(), key: value})
    else:
        was = getattr(train, key)
        train = MetaTrainSettings.from_dict({**train.to_dict(), key: value, "steps": 4})
    with pytest.raises(CheckpointError) as err:
        meta_train(MLP(2, (4,), dtype="float64"), fams, out=out, resume=True, progress=False,
                   settings=settings, train=train)
    msg = str(err.value)
    assert "\n" not in msg and "cannot resume" in msg
    assert f"with {key} = {was!r}, this run asks for {key} = {value!r}" in msg
    assert out.read_bytes() == before


def test_resume_accepts_more_steps_and_other_checkpoint_and_validation_intervals(tmp_path):
    fams = _families(4)
    base = _resume_base()
    longer = MetaTrainSettings.from_dict({**base["train"].to_dict(), "steps": 4})
    full = meta_train(MLP(2, (4,), dtype="float64"), fams[:3], fams[3:], progress=False,
                      settings=base["settings"], train=longer)
    out = tmp_path / "l.pt"
    meta_train(MLP(2, (4,), dtype="float64"), fams[:3], fams[3:], out=out, progress=False,
               **base)
    changed = MetaTrainSettings.from_dict({**longer.to_dict(), "checkpoint_every": 7,
                                           "val_every": 9})
    resumed = meta_train(MLP(2, (4,), dtype="float64"), fams[:3], fams[3:], out=out,
                         resume=True, progress=False, settings=base["settings"], train=changed)
    assert_tree_close(resumed.meta_params, full.meta_params, rtol=0, atol=0)


def test_cli_prior_for_a_non_parametric_model_is_refused_before_training(tmp_path, capsys):
    data = _toy_table(tmp_path / "toy.csv")
    out = tmp_path / "p.pt"
    assert main(["meta-train", "--data", str(data), "--model", "mlp", "--target", "y",
                 "--features", "x1,x2", "--device", "cpu", "--steps", "2", "--no-progress",
                 "--out", str(out), "--prior", str(tmp_path / "prior.json")]) == 2
    err = capsys.readouterr().err
    assert "--prior is for parametric models" in err and "not mlp" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.csv"]  # no checkpoint, no plot


def _kinetics_table(path: Path, grades=6, points=12) -> Path:
    """One isotherm per grade (its own temperature): ln k ~ N(-7, 1) ln(1/s), n ~ 2, noise 0.02."""
    rng = np.random.default_rng(1)
    rows = []
    for g in range(grades):
        ln_k, n = rng.normal(-7.0, 1.0), 2.0 * np.exp(rng.normal(0.0, 0.1))
        for t in np.geomspace(10.0, 1e5, points):
            f = 1.0 - np.exp(-((np.exp(ln_k) * t) ** n)) + rng.normal(0.0, 0.02)
            rows.append({"dataset_id": f"G{g}", "temperature_K": 1300.0 + 10 * g, "time_s": t,
                         "fraction": float(np.clip(f, 0.0, 1.0))})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_cli_kinetics_prior_is_learned_across_the_training_families(tmp_path, capsys):
    from matmeta.bayes import learn_prior
    from matmeta.meta._data import load_families
    from matmeta.models.parametric import JMAK, Prior

    data = _kinetics_table(tmp_path / "kin.csv")
    out, prior = tmp_path / "k.pt", tmp_path / "prior.json"
    assert main(["meta-train", "--data", str(data), "--model", "jmak", "--k-shot", "3",
                 "--q-query", "3", "--meta-batch", "2", "--steps", "3", "--device", "cpu",
                 "--no-progress", "--out", str(out), "--prior", str(prior)]) == 0
    stdout = capsys.readouterr().out
    ck = load_meta(out)
    names = ck.extra["families"]["train"]
    fams = {f.name: f for f in load_families(data, "jmak").families}
    assert len(names) == 5 and "prior learned across 5 of 5 meta-training families" in stdout
    direct = learn_prior(JMAK(), [fams[n].inputs for n in names], [fams[n].y for n in names])
    p = Prior.load(prior, model=JMAK())
    torch.testing.assert_close(p.mean, direct.prior.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.cov, direct.prior.cov, rtol=1e-12, atol=1e-14)
    assert p.noise_std == pytest.approx(direct.prior.noise_std, rel=1e-12)
    assert f"ln_k {p.mean[0].item():.4g} +- {p.std[0].item():.3g}" in stdout


def test_cli_prior_without_two_fittable_training_families_is_refused_before_training(
        tmp_path, capsys):
    data = _kinetics_table(tmp_path / "kin.csv")
    base = ["meta-train", "--data", str(data), "--k-shot", "3", "--q-query", "3", "--steps",
            "2", "--device", "cpu", "--no-progress", "--prior", str(tmp_path / "prior.json")]
    # one isotherm per grade: no grade can be fitted by Arrhenius-JMAK (one temperature each)
    assert main([*base, "--model", "arrhenius_jmak", "--out", str(tmp_path / "a.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0 of 5 meta-training families can be fitted" in err
    assert "G0 (ArrheniusJMAK: an Arrhenius fit needs isotherms at two or more" in err
    # one training family left by the split
    assert main([*base, "--model", "jmak", "--val-families", "G1,G2,G3,G4,G5",
                 "--out", str(tmp_path / "j.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of 1 meta-training families can be fitted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kin.csv"]  # nothing written


def test_families_too_small_are_reported_or_refused():
    fams = _families(3, size=12) + [Family("tiny", torch.zeros(4, 2), torch.zeros(4))]
    with pytest.warns(UserWarning, match=r"not drawn: tiny \(4\)"):
        sampler = EpisodeSampler(fams, 3, 4, 2)
    assert "tiny" not in {f.name for f in sampler.families}
    with pytest.raises(InputError, match=r"no meta-train family has the 20 samples.*fam0 \(12\)"):
        EpisodeSampler(fams, 10, 10, 2)
    with pytest.raises(InputError, match="meta-batch size 0"):
        EpisodeSampler(fams, 3, 4, 0)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = _toy_table(tmp_path / "toy.csv")
    base = ["meta-train", "--data", str(data), "--model", "mlp", "--target", "y",
            "--features", "x1,x2", "--device", "cpu", "--steps", "2", "--no-progress"]
    out = tmp_path / "o.pt"
    assert main([*base, "--algorithm", "mamll", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown algorithm 'mamll'" in err and not out.exists()
    assert main([*base, "--k-shot", "10", "--q-query", "10", "--out", str(out)]) == 2
    assert "no meta-train family has the 20 samples" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--meta-batch", "0", "--out", str(out)]) == 2
    assert "meta-batch size 0" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"precious")
    assert main([*base, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    # the plot and the prior are not replaced silently either, and no output may be an input
    fresh = tmp_path / "fresh.pt"
    (tmp_path / "fresh.png").write_bytes(b"my figure")
    assert main([*base, "--out", str(fresh)]) == 2
    assert "--plot" in capsys.readouterr().err and not fresh.exists()
    assert (tmp_path / "fresh.png").read_bytes() == b"my figure"
    assert main([*base, "--out", str(data), "--overwrite"]) == 2
    assert "is one of this run's inputs" in capsys.readouterr().err
    same = tmp_path / "same.png"
    assert main([*base, "--out", str(same), "--plot", str(same), "--overwrite"]) == 2
    assert "--plot" in (err := capsys.readouterr().err) and "also written as --out" in err
    assert not same.exists()
    assert data.read_text().startswith("family")
    assert main([*base, "--out", str(fresh), "--overwrite"]) == 0
    assert fresh.exists() and (tmp_path / "fresh.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_config_file_is_read_flags_override_and_all_is_recorded(tmp_path):
    data = _toy_table(tmp_path / "toy.csv")
    cfg = tmp_path / "run.toml"
    cfg.write_text('algorithm = "fomaml"\ninner_lr = 0.02\nsteps = 3\nk_shot = 3\n'
                   'q_query = 4\nmeta_batch = 2\n[model]\nhidden = [6]\n')
    out = tmp_path / "cfg.pt"
    assert main(["meta-train", "--data", str(data), "--model", "mlp", "--target", "y",
                 "--features", "x1,x2", "--config", str(cfg), "--inner-lr", "0.03",
                 "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    ck = load_meta(out)
    assert ck.settings.algorithm == "fomaml" and ck.settings.inner_lr == 0.03
    assert ck.train.steps == 3 and ck.model.hidden == (6,)
    assert ck.extra["data"]["options"]["inner_lr"] == 0.03
    assert ck.extra["target_transform"]["kind"] == "standardize"
    assert (tmp_path / "cfg.png").stat().st_size > 1000


@pytest.mark.parametrize("text,message", [
    ('steps = "five"\n', "steps = 'five': expected an integer"),
    ("steps = 2.5\n", "steps = 2.5: expected an integer"),
    ('outer_lr = "fast"\n', "outer_lr = 'fast': expected a number"),
    ("k_shot = true\n", "k_shot = True: expected an integer"),
    ('dtype = "float16"\n', "dtype = 'float16': expected one of float32, float64"),
    ('target_transform = "log"\n', "target_transform = 'log': expected one of identity"),
])
def test_cli_config_values_of_the_wrong_type_are_one_line_errors(tmp_path, capsys, text,
                                                                 message):
    data = _toy_table(tmp_path / "toy.csv")
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "m.pt"
    assert main(["meta-train", "--data", str(data), "--model", "mlp", "--target", "y",
                 "--features", "x1,x2", "--config", str(cfg), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_outer_update_matches_torch_optim_with_clipping_and_cosine(kind):
    from matmeta.meta._train import outer_init, outer_update

    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(3, 2, generator=gen, dtype=F64),
              "b": torch.randn(4, generator=gen, dtype=F64)}
    tr = MetaTrainSettings(steps=5, outer_optimizer=kind, outer_lr=0.1, clip=0.5,
                           schedule="cosine")
    leaves = [params[k].clone().requires_grad_() for k in params]
    opt = (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(leaves, lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    ours, state = dict(params), outer_init(params)
    for _ in range(5):
        grads = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in params.items()}
        for leaf, g in zip(leaves, grads.values(), strict=True):
            leaf.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(leaves, 0.5)
        opt.step()
        sched.step()
        ours, state = outer_update(ours, grads, state, tr)
    for leaf, k in zip(leaves, params, strict=True):
        torch.testing.assert_close(ours[k], leaf.detach(), rtol=1e-6, atol=1e-9)


def _salt_table(path: Path) -> Path:
    import io
    import json

    from ase.build import bulk
    from ase.io import write

    rows = []
    for fam, (a_el, b_el) in enumerate([("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Li", "F")]):
        for j in range(5):
            a = 4.0 + 0.1 * j + 0.3 * fam
            buf = io.BytesIO()
            write(buf, bulk(a_el + b_el, "rocksalt", a=a), format="cif")
            rows.append({"structure": buf.getvalue().decode(), "K_GPa": 3000.0 / a**3,
                         "family": b_el})
    path.write_text(json.dumps(rows))
    return path


def test_cli_gnn_records_featurizer_and_refuses_another_on_resume(tmp_path, capsys):
    data = _salt_table(tmp_path / "salts.json")
    out = tmp_path / "gnn.pt"
    args = ["meta-train", "--data", str(data), "--model", "gnn", "--target", "K_GPa",
            "--algorithm", "anil", "--k-shot", "2", "--q-query", "3", "--meta-batch", "2",
            "--steps", "2", "--inner-steps", "1", "--hidden", "8", "--val-families", "Br",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    cfg = tmp_path / "f.toml"
    cfg.write_text("[featurizer]\ncutoff = 5.0\nn_basis = 8\n[model]\nn_conv = 1\n")
    assert main([*args, "--config", str(cfg)]) == 0
    ck = load_meta(out)
    assert ck.extra["featurizer"]["cutoff"] == 5.0 and ck.model.n_basis == 8
    assert ck.extra["target_transform"]["kind"] == "log10_standardize"
    assert ck.inner["trainable"] == ck.model.head_names()
    assert ck.extra["families"]["val"] == ["Br"]
    before = out.read_bytes()
    capsys.readouterr()
    cfg.write_text("[featurizer]\ncutoff = 5.5\nn_basis = 8\n[model]\nn_conv = 1\n")
    assert main([*args, "--config", str(cfg), "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "featurizer" in err and "cannot resume" in err and err.count("\n") == 1
    assert out.read_bytes() == before


@pytest.mark.shared_data
def test_cli_kinetics_writes_a_prior_the_jmak_fitter_reads(tmp_path, capsys):
    from matmeta.models.parametric import JMAK, Prior
    from tests.helpers import shared_dataset

    data = shared_dataset("kinetics/tungsten_recrystallization.csv")
    out, prior = tmp_path / "w.pt", tmp_path / "prior.json"
    assert main(["meta-train", "--data", str(data), "--model", "jmak", "--k-shot", "3",
                 "--q-query", "3", "--meta-batch", "4", "--steps", "3", "--inner-steps", "2",
                 "--allow-negative-time", "--fraction-tolerance", "0.2", "--test-families",
                 "W_Lopez2015_HR", "--device", "cpu", "--no-progress", "--out", str(out),
                 "--prior", str(prior)]) == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "not drawn" in captured.err  # small isotherms named
    ck = load_meta(out)
    assert "W_Lopez2015_HR" not in {n.split("@")[0] for n in ck.extra["families"]["train"]}
    assert all(n.startswith("W_Lopez2015_HR@") for n in ck.extra["families"]["test"])
    # the prior is Laplace-EM across the training isotherms (not the MAML initialisation)
    from matmeta.bayes import learn_prior
    from matmeta.meta._data import load_families

    fams = {f.name: f for f in load_families(data, "jmak", fraction_tolerance=0.2,
                                             allow_negative_time=True).families}
    train = [fams[n] for n in ck.extra["families"]["train"]]
    direct = learn_prior(JMAK(), [f.inputs for f in train], [f.y for f in train]).prior
    p = Prior.load(prior, model=JMAK())
    torch.testing.assert_close(p.mean, direct.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.cov, direct.cov, rtol=1e-12, atol=1e-14)
    assert p.std[0].item() > 2.0  # tungsten half times span 2e2-1e9 s
    # `matmeta jmak fit --prior` reads it: three points of a held-out isotherm
    held = fams["W_Lopez2015_HR@1473.15K"]
    three = pd.DataFrame({"dataset_id": "W_Lopez2015_HR", "temperature_K": 1473.15,
                          "time_s": held.inputs[[2, 6, 10]].double().numpy(),
                          "fraction": held.y[[2, 6, 10]].double().numpy().clip(0, 1)})
    three.to_csv(tmp_path / "three.csv", index=False)
    capsys.readouterr()
    assert main(["jmak", "fit", str(tmp_path / "three.csv"), "--prior", str(prior),
                 "--out", str(tmp_path / "fit.csv")]) == 0, capsys.readouterr().err
    fit = pd.read_csv(tmp_path / "fit.csv")
    assert len(fit) == 1 and float(fit["t_half_s"].iloc[0]) > 0
