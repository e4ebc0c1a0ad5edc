"""ISD (Tejankar et al., 2021): the similarity-distillation loss against a slow reference, the
method's step (teacher on view 0, student on view 1, the bank as it was before the step, EMA
teacher), resume, the bank cap, the teacher as the evaluated / exported encoder, the "plus"
form, and the bank under two gloo ranks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from contrastlab.cli import main
from contrastlab.components.heads import MLPHead
from contrastlab.core.config import ConfigError
from contrastlab.core.distributed import DistEnv
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine import evaluation
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import similarity_distillation
from contrastlab.methods import isd as isd_module
from contrastlab.methods.base import StepInput
from contrastlab.methods.isd import ISD, ISDConfig
from contrastlab.models import build_backbone
from multiproc import run_ranks
from test_trainer import losses, resumed_like_uninterrupted, tiny_config

ISD_TINY = ["method.name=isd", "method.pred_hidden_dim=32", "method.queue_size=100",
            "method.base_momentum=0.5", "method.final_momentum=0.5"]


# ----------------------------------------------------------------------------- the loss


def slow_distillation(q, k, bank, t_student, t_teacher):
    """Row by row, softmaxes by explicit exp / sum, KL(teacher || student) as a sum."""
    total = 0.0
    for i in range(q.shape[0]):
        qi, ki = q[i] / q[i].norm(), k[i] / k[i].norm()
        es = torch.stack([torch.exp(qi @ bank[m] / t_student) for m in range(bank.shape[0])])
        et = torch.stack([torch.exp(ki @ bank[m] / t_teacher) for m in range(bank.shape[0])])
        ps, pt = es / es.sum(), et / et.sum()
        total = total + sum(pt[m] * (torch.log(pt[m]) - torch.log(ps[m])) for m in range(bank.shape[0]))
    return total / q.shape[0]


def loss_inputs(batch=5, dim=7, size=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (3 * torch.randn(batch, dim, generator=g, dtype=torch.float64)).requires_grad_()  # not unit: normalised inside
    k = (2 * torch.randn(batch, dim, generator=g, dtype=torch.float64)).requires_grad_()
    bank = F.normalize(torch.randn(size, dim, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    return q, k, bank


@pytest.mark.parametrize("t_student, t_teacher", [(0.1, 0.04), (0.5, 0.5), (0.2, 0.07)])
def test_similarity_distillation_matches_a_slow_loop_in_value_and_gradient(t_student, t_teacher):
    q, k, bank = loss_inputs()
    loss = similarity_distillation(q, k, bank, t_student, t_teacher)
    assert loss.dtype == torch.float64
    (grad,) = torch.autograd.grad(loss, q, retain_graph=True)
    q_ref = q.detach().clone().requires_grad_()
    ref = slow_distillation(q_ref, k.detach(), bank.detach(), t_student, t_teacher)
    (grad_ref,) = torch.autograd.grad(ref, q_ref)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0
    loss.backward()  # the teacher's embeddings and the bank are constants
    assert k.grad is None and bank.grad is None


def test_similarity_distillation_is_kl_from_the_teacher_to_the_student():
    q, _, bank = loss_inputs(batch=6, dim=16, size=12, seed=1)
    q, bank = q.detach(), bank.detach()
    targets = torch.tensor([0, 3, 3, 7, 11, 5])
    k = 2.5 * bank[targets]  # the teacher's key is a bank entry (up to scale)
    t_student, t_teacher = 0.2, 1e-3
    loss = similarity_distillation(q, k, bank, t_student, t_teacher)
    log_student = F.log_softmax(F.normalize(q, dim=1) @ bank.T / t_student, dim=1)
    log_teacher = F.log_softmax(F.normalize(k, dim=1) @ bank.T / t_teacher, dim=1)
    # A near one-hot teacher: the loss is the student's cross-entropy toward that entry (the
    # teacher's entropy vanishes).
    cross_entropy = F.nll_loss(log_student, targets)
    torch.testing.assert_close(loss, cross_entropy, rtol=0, atol=1e-9)
    forward_kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")  # KL(teacher||student)
    reverse_kl = F.kl_div(log_teacher, log_student, log_target=True, reduction="batchmean")  # KL(student||teacher)
    torch.testing.assert_close(loss, forward_kl, rtol=1e-10, atol=1e-10)
    assert loss < 10 and reverse_kl > 100  # the other direction is a very different number
    # The same with temperatures of the same order (no one-hot): still the forward KL only.
    k = 0.3 * k + torch.randn(k.shape, generator=torch.Generator().manual_seed(2), dtype=k.dtype)
    loss = similarity_distillation(q, k, bank, 0.1, 0.05)
    log_student = F.log_softmax(F.normalize(q, dim=1) @ bank.T / 0.1, dim=1)
    log_teacher = F.log_softmax(F.normalize(k, dim=1) @ bank.T / 0.05, dim=1)
    torch.testing.assert_close(loss, F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean"))
    assert not torch.isclose(loss, F.kl_div(log_teacher, log_student, log_target=True, reduction="batchmean"))


def test_similarity_distillation_is_float32_under_bfloat16_autocast():
    q, k, bank = (x.detach().float() for x in loss_inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = similarity_distillation(q.bfloat16(), k.bfloat16(), bank.bfloat16(), 0.1, 0.05)
    assert loss.dtype == torch.float32
    exact = similarity_distillation(q.bfloat16().float(), k.bfloat16().float(), bank.bfloat16().float(), 0.1, 0.05)
    torch.testing.assert_close(loss, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shapes, temps, message", [
    (((4, 8), (4, 8), (10, 8)), (0.0, 0.1), "temperatures must be > 0"),
    (((4, 8), (4, 8), (10, 8)), (0.1, -1.0), "temperatures must be > 0"),
    (((4, 8), (5, 8), (10, 8)), (0.1, 0.1), "expected student, teacher"),
    (((4, 8), (4, 8), (10, 7)), (0.1, 0.1), "expected student, teacher"),
    (((4, 8, 1), (4, 8, 1), (10, 8)), (0.1, 0.1), "expected student, teacher"),
    (((4, 8), (4, 8), (10,)), (0.1, 0.1), "expected student, teacher"),
], ids=["t_student", "t_teacher", "batch", "dim", "3d", "1d_bank"])
def test_similarity_distillation_rejects_bad_shapes_and_temperatures(shapes, temps, message):
    with pytest.raises(ValueError, match=message):
        similarity_distillation(*(torch.randn(s) for s in shapes), *temps)


# ----------------------------------------------------------------------------- the method, one step


def small_isd(**overrides) -> ISD:
    torch.manual_seed(0)
    fields = dict(pred_hidden_dim=16, proj_hidden_dim=16, proj_out_dim=6, queue_size=20, bn_guard="none",
                  student_temperature=0.1, teacher_temperature=0.05)
    method = ISD(ISDConfig(**{**fields, **overrides}), build_backbone("convnet", (1, 8, 8), channels=(4, 8)))
    with torch.no_grad():  # a student that has moved away from its teacher
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    return method


def two_views(batch=6):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 1, 8, 8, generator=g), torch.randn(batch, 1, 8, 8, generator=g)]


@pytest.mark.parametrize("projection", [False, True], ids=["isd", "plus"])
def test_a_step_distils_the_teachers_view_0_into_the_students_view_1(projection):
    method = small_isd(projection=projection)
    weak, strong = views = two_views()
    bank_before = method.bank.features.clone()
    out = method.training_step(StepInput(views, generator=torch.Generator()))
    h = method.backbone(strong)
    student = method.predictor(method.projector(h))
    keys = method.teacher.module(weak)
    expected = similarity_distillation(student, keys, bank_before, 0.1, 0.05)
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["features"], h.detach(), rtol=0, atol=0)
    # Swapped views, or the student's own encoder as the teacher, give another loss.
    swapped = similarity_distillation(method.predictor(method.projector(method.backbone(weak))),
                                      method.teacher.module(strong), bank_before, 0.1, 0.05)
    own = similarity_distillation(student, method.projector(method.backbone(weak)), bank_before, 0.1, 0.05)
    assert not torch.isclose(out["loss"], swapped) and not torch.isclose(out["loss"], own)
    assert torch.equal(method.bank.features, bank_before)  # nothing enqueued before the optimiser step

    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    for part in (method.backbone, method.predictor) + ((method.projector,) if projection else ()):
        assert all(p.grad is not None for p in part.parameters())
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0

    method.on_after_optimizer_step(0.5)  # the keys computed in the step, by the teacher before its update
    torch.testing.assert_close(method.bank.features[:6], F.normalize(keys, dim=1), rtol=0, atol=1e-6)
    assert torch.equal(method.bank.features[6:], bank_before[6:]) and int(method.bank.pointer) == 6


def test_the_plus_form_has_projections_on_both_encoders_and_a_predictor_on_the_student():
    plain, plus = small_isd(), small_isd(projection=True)
    assert isinstance(plain.projector, nn.Identity) and plain.bank.features.shape == (20, 8)
    assert isinstance(plus.projector, MLPHead) and isinstance(plus.teacher.module[1], MLPHead)
    assert [p.shape for p in plus.teacher.module[1].parameters()] == [p.shape for p in plus.projector.parameters()]
    assert plus.bank.features.shape == (20, 6) and plus.predictor[0].in_features == 6
    assert plus.predictor[-1].out_features == 6
    assert not any(name.startswith("teacher.") and "predictor" in name for name, _ in plus.named_parameters())


def test_the_shuffle_guard_runs_the_teacher_on_view_0(monkeypatch):
    method = small_isd(bn_guard="shuffle", bn_splits=2)
    calls = []
    original = isd_module.guarded_forward

    def spy(module, x, guard, splits, generator):
        calls.append((module, x, guard, splits))
        return original(module, x, guard, splits, generator)

    monkeypatch.setattr(isd_module, "guarded_forward", spy)
    views = two_views()
    method.training_step(StepInput(views, generator=torch.Generator().manual_seed(0)))
    ((module, x, guard, splits),) = calls
    assert module is method.teacher.module and x is views[0] and (guard, splits) == ("shuffle", 2)


# ----------------------------------------------------------------------------- the method in the trainer


class StepSpy:
    """Records, per trainer step: the views, the bank and the teacher before the step, the
    student's and teacher's embeddings the loss got, the teacher's input, and around
    ``on_after_optimizer_step`` the teacher and student before the EMA update and the teacher
    and bank after it."""

    def __init__(self, monkeypatch):
        self.steps = []
        step_original, after_original = ISD.training_step, ISD.on_after_optimizer_step
        loss_original, forward_original = isd_module.similarity_distillation, isd_module.guarded_forward
        spy = self

        def training_step(method, step):
            spy.steps.append({"views": step.views, "bank": method.bank.features.clone(),
                              "pointer": int(method.bank.pointer),
                              "teacher": copy.deepcopy(method.teacher.module)})
            return step_original(method, step)

        def loss(student, teacher, bank, t_student, t_teacher):
            spy.steps[-1].update(student=student.detach().clone(), keys=teacher.detach().clone(),
                                 temperatures=(t_student, t_teacher))
            return loss_original(student, teacher, bank, t_student, t_teacher)

        def guarded(module, x, guard, splits, generator):
            spy.steps[-1]["teacher_input"] = x
            return forward_original(module, x, guard, splits, generator)

        def after(method, progress):
            record = spy.steps[-1]
            student = nn.Sequential(method.backbone, method.projector)
            record["teacher_before_update"] = [t.clone() for t in method.teacher.module.parameters()]
            record["student_state"] = [s.detach().clone() for s in student.parameters()]
            after_original(method, progress)
            record["teacher_after_update"] = [t.clone() for t in method.teacher.module.parameters()]
            record["buffers_after_update"] = [(t.clone(), s.clone()) for t, s in
                                              zip(method.teacher.module.buffers(), student.buffers(), strict=True)]
            record["bank_after"] = method.bank.features.clone()
            record["pointer_after"] = int(method.bank.pointer)

        monkeypatch.setattr(ISD, "training_step", training_step)
        monkeypatch.setattr(ISD, "on_after_optimizer_step", after)
        monkeypatch.setattr(isd_module, "similarity_distillation", loss)
        monkeypatch.setattr(isd_module, "guarded_forward", guarded)


def test_a_trainer_step_sees_the_bank_from_before_it_and_enqueues_the_teachers_keys(tmp_path, monkeypatch):
    spy = StepSpy(monkeypatch)
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=3", "method.bn_guard=none", *ISD_TINY)
    Trainer(cfg, tmp_path, init_distributed("cpu")).fit()
    logged = losses(tmp_path)
    assert len(spy.steps) == 3 and list(logged) == [1, 2, 3]
    for n, record in enumerate(spy.steps):
        assert record["teacher_input"] is record["views"][0]
        # The keys are the teacher's (as before the step) on view 0.
        torch.testing.assert_close(record["keys"], record["teacher"](record["views"][0]), rtol=0, atol=1e-6)
        positions = (record["pointer"] + torch.arange(64)) % 100
        assert record["pointer"] == (64 * n) % 100 and record["pointer_after"] == (64 * (n + 1)) % 100
        torch.testing.assert_close(record["bank_after"][positions], F.normalize(record["keys"], dim=1),
                                   rtol=0, atol=1e-6)
        kept = torch.ones(100, dtype=torch.bool)
        kept[positions] = False
        assert torch.equal(record["bank_after"][kept], record["bank"][kept])  # FIFO: only the oldest replaced
        # The logged loss is the one with the bank from before the step, not after.
        before = similarity_distillation(record["student"], record["keys"], record["bank"], 0.02, 0.02).item()
        after = similarity_distillation(record["student"], record["keys"], record["bank_after"], 0.02, 0.02).item()
        assert logged[n + 1] == pytest.approx(before, rel=1e-6, abs=1e-7)
        assert after != pytest.approx(before, rel=1e-3), (before, after)
        if n > 0:  # after a step the teacher (momentum 0.5) is not the student: the keys tell them apart
            assert not all(torch.equal(t, s) for t, s in zip(record["teacher_before_update"], record["student_state"]))


def test_the_teacher_is_an_ema_of_the_student_and_gets_no_gradient(tmp_path, monkeypatch):
    spy = StepSpy(monkeypatch)
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=3", *ISD_TINY)  # momentum 0.5
    trainer = Trainer(cfg, tmp_path / "ema", init_distributed("cpu"))
    m = trainer.method
    initial = {k: v.clone() for k, v in m.state_dict().items()}
    trainer.fit()
    for record in spy.steps:
        params = zip(record["teacher_before_update"], record["student_state"], record["teacher_after_update"],
                     strict=True)
        for t0, s, t1 in params:
            torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s, rtol=1e-6, atol=1e-7)
        assert record["buffers_after_update"]  # BatchNorm statistics: copied from the student
        assert all(torch.equal(t, s) for t, s in record["buffers_after_update"])
    teacher = m.teacher.module.state_dict()
    student = nn.Sequential(m.backbone, m.projector).state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # momentum 0.5: not the student
    assert all(not p.requires_grad and p.grad is None for p in m.teacher.parameters())
    state = m.state_dict()
    for prefix in ("backbone.", "predictor.", "teacher.module.0."):
        assert any(not torch.equal(initial[k], state[k]) for k in state if k.startswith(prefix)), prefix

    # Momentum 0: the teacher is the student after each step.
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", *ISD_TINY,
                      "method.base_momentum=0", "method.final_momentum=0")
    trainer = Trainer(cfg, tmp_path / "zero", init_distributed("cpu"))
    trainer.fit()
    m = trainer.method
    teacher, student = m.teacher.module.state_dict(), nn.Sequential(m.backbone, m.projector).state_dict()
    assert teacher.keys() == student.keys() and all(torch.equal(teacher[k], student[k]) for k in teacher)


def test_isd_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=3", *ISD_TINY)
    whole, _ = resumed_like_uninterrupted(cfg, tmp_path, monkeypatch)
    a = whole["method"]
    assert whole["step"] == 12
    assert int(a["bank.pointer"]) == (12 * 64) % 100  # the bank and its pointer are in the state
    assert any(k.startswith("teacher.module.0.") for k in a)
    initial = Trainer(cfg, tmp_path / "initial", init_distributed("cpu")).method.bank.features  # the same seed, before training
    assert not torch.equal(a["bank.features"], initial)
    torch.testing.assert_close(a["bank.features"].norm(dim=1), torch.ones(100))


def test_a_bank_longer_than_the_training_set_is_capped_with_a_warning(tmp_path):
    cfg = tiny_config("train.epochs=1", "method.name=isd", "method.pred_hidden_dim=32", "method.queue_size=1000")
    with pytest.warns(UserWarning, match="method.queue_size=1000 is larger than the 256 training samples"):
        trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    assert trainer.method.bank.features.shape == (256, 16) and cfg.method.queue_size == 256
    cfg = tiny_config("train.epochs=1", "method.name=isd", "method.pred_hidden_dim=32", "method.queue_size=200")
    assert Trainer(cfg, tmp_path / "short", init_distributed("cpu")).method.bank.features.shape == (200, 16)


def test_the_plus_form_trains_with_a_weak_teacher_view_and_a_strong_student_view(tmp_path, monkeypatch):
    spy = StepSpy(monkeypatch)
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", *ISD_TINY, "method.projection=true",
                      "method.teacher_temperature=0.01", "method.student_temperature=0.1",
                      "augment.views=[{transforms: [{name: crop, scale: [0.8, 1.0]}]},"
                      " {transforms: [{name: crop, scale: [0.2, 1.0]}, {name: blur, prob: 0.5}]}]")
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    m = trainer.method
    projection0 = [p.clone() for p in m.teacher.module[1].parameters()]
    trainer.fit()
    assert isinstance(m.projector, MLPHead) and m.bank.features.shape == (100, 16)
    for record in spy.steps:
        assert record["teacher_input"] is record["views"][0]  # the weak view
        assert not torch.equal(record["views"][0], record["views"][1])
        assert record["keys"].shape == record["student"].shape == (64, 16)
        assert record["temperatures"] == (0.1, 0.01)
    assert not all(torch.equal(a, b) for a, b in zip(projection0, m.teacher.module[1].parameters()))
    assert all(torch.isfinite(torch.tensor(list(losses(tmp_path).values()))))


# ----------------------------------------------------------------------------- the teacher as the encoder


@pytest.fixture(scope="module")
def isd_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("isd") / "run"
    Trainer(tiny_config("train.epochs=1", "train.max_steps_per_epoch=3", *ISD_TINY), run, init_distributed("cpu")).fit()
    return run


def prefixed(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_eval_encoder_teacher_evaluates_the_teachers_backbone(isd_run, monkeypatch):
    loaded = []
    original = evaluation.evaluate

    def spy(backbone, *args, **kwargs):
        loaded.append({k: v.detach().clone() for k, v in backbone.state_dict().items()})
        return original(backbone, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    state = ckpt.load_checkpoint(isd_run)["method"]
    teacher, student = prefixed(state, "teacher.module.0."), prefixed(state, "backbone.")
    assert teacher.keys() == student.keys() and any(not torch.equal(teacher[k], student[k]) for k in teacher)
    runs = {}
    for encoder in ("teacher", "student"):
        cfg = tiny_config(*ISD_TINY, f"eval.encoder={encoder}", "eval.compare_random_init=false")
        runs[encoder] = evaluation.evaluate_run(isd_run, cfg, echo=False)
    assert runs["teacher"]["encoder"] == "teacher" and runs["student"]["encoder"] == "student"
    assert json.loads((isd_run / "results.json").read_text())["encoder"] == "student"  # the last one written
    assert len(loaded) == 2
    assert loaded[0].keys() == teacher.keys() and all(torch.equal(loaded[0][k], teacher[k]) for k in teacher)
    assert all(torch.equal(loaded[1][k], student[k]) for k in student)
    assert 0 <= runs["teacher"]["trained"]["knn"]["accuracy"] <= 100


@pytest.mark.parametrize("method, encoder, choices", [
    (["method.name=simclr"], "teacher", "choose student$"),
    (["method.name=isd"], "ema", "choose student or teacher$"),
])
def test_eval_encoder_is_checked_against_the_methods_encoders(method, encoder, choices):
    name = method[0].split("=")[1]
    with pytest.raises(ConfigError, match=f"eval.encoder: method '{name}' has no '{encoder}' encoder; {choices}"):
        tiny_config(*method, f"eval.encoder={encoder}")
    for other in ("moco", "byol", "isd"):
        assert tiny_config(f"method.name={other}", "eval.encoder=teacher").eval.encoder == "teacher"


def test_export_encoder_teacher_writes_the_teachers_weights(isd_run, tmp_path):
    state = ckpt.load_checkpoint(isd_run)["method"]
    for encoder, prefix in (("teacher", "teacher.module.0."), ("student", "backbone.")):
        out = tmp_path / f"{encoder}.safetensors"
        assert main(["export", str(isd_run), "--out", str(out), "--encoder", encoder]) == 0
        weights, expected = load_file(str(out)), prefixed(state, prefix)
        assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)
        with safe_open(str(out), "pt") as f:
            assert json.loads(f.metadata()["contrastlab"])["encoder"] == encoder
    teacher = load_file(str(tmp_path / "teacher.safetensors"))
    student = load_file(str(tmp_path / "student.safetensors"))
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    default = tmp_path / "default.safetensors"
    assert main(["export", str(isd_run), "--out", str(default)]) == 0
    assert all(torch.equal(v, student[k]) for k, v in load_file(str(default)).items())


def test_export_encoder_teacher_of_a_run_without_one_is_a_user_error(tmp_path, capsys):
    run = tmp_path / "simclr"
    Trainer(tiny_config("train.epochs=1", "train.max_steps_per_epoch=1"), run, init_distributed("cpu")).fit()
    out = tmp_path / "b.safetensors"
    assert main(["export", str(run), "--out", str(out), "--encoder", "teacher"]) == 2
    err = capsys.readouterr().err
    assert "--encoder: method 'simclr' has no 'teacher' encoder; choose student" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- two gloo ranks

WORLD, BATCH = 2, 8


def ddp_isd() -> ISD:
    torch.manual_seed(0)
    method = ISD(ISDConfig(pred_hidden_dim=16, queue_size=12, student_temperature=0.1, teacher_temperature=0.05),
                 build_backbone("mlp", (1, 4, 4), hidden=(8,)))
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return method.eval()  # BatchNorm on running statistics: every output row is per sample


def ddp_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 1, 4, 4, generator=g), torch.randn(BATCH, 1, 4, 4, generator=g)]


def ddp_step(views, generator_seed=5) -> dict:
    method = ddp_isd()
    out = method.training_step(StepInput(views, generator=torch.Generator().manual_seed(generator_seed)))
    method.on_after_optimizer_step(0.5)
    return {"loss": out["loss"].detach(), "bank": method.bank.features.clone(), "pointer": int(method.bank.pointer)}


def ddp_worker(env: DistEnv) -> dict:
    local = slice(env.rank * BATCH // WORLD, (env.rank + 1) * BATCH // WORLD)
    return ddp_step([v[local] for v in ddp_views()])  # shuffle-BN across ranks, keys gathered into the bank


def test_two_ranks_give_the_loss_and_bank_of_one_process_over_the_whole_batch(tmp_path):
    ranks = run_ranks(ddp_worker, tmp_path, WORLD)
    whole = ddp_step(ddp_views())
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, whole["loss"], rtol=1e-6, atol=1e-6)
    for r in ranks:
        assert r["pointer"] == whole["pointer"] == BATCH
        torch.testing.assert_close(r["bank"], whole["bank"], rtol=0, atol=1e-6)
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"])
