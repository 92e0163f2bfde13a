"""The method registry: methods found by their module alone, hyperparameters declared once (the
constructor's keywords) and turned into main.py's flags, get_method's strictness, named loss
terms, and the reference models each epoch needs."""
import argparse
import json
import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import methods.registry as registry
from conftest import REPO, assert_ok, common_args, script_env
from methods import Method, Option, declared_defaults, get_method, hyperparameters, method_names, option, register
from utils.cli import add_method_flags, default_output_dir, method_from_args, parse, take_method_flags
from utils.errors import UserError
from utils.settings import flag, run_settings

# The terms of each built-in method after the warm-up (ELODI's: only "ce" before it).
TERMS = {
    "No_Treatment": ["ce"],
    "PCT_Naive": ["ce", "old_correct_ce"],
    "PCT_KL": ["ce", "distill_old"],
    "PCT_LM": ["ce", "distill_old"],
    "ELODI": ["ce", "lm_old", "lm_ensemble"],
    "ELODI_topk": ["ce", "lm_old", "lm_ensemble"],
    "MPT_KL": ["ce_b", "distill_old", "distill_new"],
    "MPT_LM": ["ce_b", "distill_old", "distill_new"],
    "MPT_nodistillation": ["ce_b"],
    "MPT_KL_nobias": ["ce", "distill_old", "distill_new"],
    "MPT_LM_nobias": ["ce", "distill_old", "distill_new"],
}

# main.py's flags of today, each the flag of a hyperparameter.
FLAGS = ["--b", "--alpha", "--beta", "--tau", "--lm-weight", "--topk", "--elodi-old-weight",
         "--elodi-ensemble-weight", "--elodi-warmup"]

MY_METHOD = '''
import torch.nn.functional as F

from methods.registry import Method, register


@register("MyMethod")
class MyMethod(Method):
    def __init__(self, my_weight=0.5, num_old=None):
        super().__init__(num_old)
        self.my_weight = my_weight

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        return {"weighted_ce": F.cross_entropy(logits, targets) * self.my_weight}
'''


def batch(dtype, seed=0, n=16, classes=10, num_old=5):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    old = torch.randn(n, num_old, generator=g, dtype=torch.float64).to(dtype)
    new = torch.randn(n, classes, generator=g, dtype=torch.float64).to(dtype)
    return z, y, old, new


# --- discovery ----------------------------------------------------------------------------

def copy_of_the_code(dst):
    """main.py and the packages it runs on, copied to ``dst`` (so that a module can be added to
    methods/ without touching the repository)."""
    dst.mkdir()
    shutil.copy(REPO / "main.py", dst)
    for package in ("methods", "utils", "models"):
        shutil.copytree(REPO / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "methods" / "my_method.py").write_text(MY_METHOD)
    return dst


@pytest.mark.slow
def test_a_new_module_in_methods_is_a_method(tmp_path):
    code = copy_of_the_code(tmp_path / "code")
    script = textwrap.dedent("""
        import json, torch
        from methods import get_method, hyperparameters, method_names
        m = get_method("MyMethod", my_weight=0.7)
        z, y = torch.zeros(2, 3), torch.tensor([0, 1])
        print(json.dumps({"names": method_names(), "params": sorted(hyperparameters("MyMethod")),
                          "terms": sorted(m.loss_terms(z, y)), "loss": m(z, y).item()}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=code, env=script_env(),
                          capture_output=True, text=True, timeout=120)
    assert_ok(proc)
    out = json.loads(proc.stdout)
    assert set(out["names"]) >= set(TERMS) | {"MyMethod"}
    assert out["params"] == ["my_weight"] and out["terms"] == ["weighted_ce"]
    assert out["loss"] == pytest.approx(0.7 * math.log(3), rel=1e-6)


def test_main_takes_the_flags_of_a_new_method_and_records_them(tmp_path, tiny_data, old_ckpt):
    code = copy_of_the_code(tmp_path / "code")
    out = tmp_path / "run"
    help_text = subprocess.run([sys.executable, str(code / "main.py"), "--help"], cwd=tmp_path,
                               env=script_env(), capture_output=True, text=True, timeout=120)
    assert_ok(help_text)
    assert "--my-weight" in help_text.stdout and "MyMethod" in help_text.stdout
    proc = subprocess.run([sys.executable, str(code / "main.py"), *common_args(tiny_data),
                           "--method", "MyMethod", "--my-weight", "0.7", "--old-ckpt", str(old_ckpt),
                           "--output-dir", str(out)],
                          cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["method"] == "MyMethod" and config["my_weight"] == 0.7


class NoTreatmentLike(Method):
    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        return {"ce": torch.nn.functional.cross_entropy(logits, targets)}


def test_registration_rejects_what_cannot_become_flags(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    before = set(registry.METHODS)

    class NoLoss(Method):
        pass

    class Required(Method):
        def __init__(self, weight, num_old=None):
            super().__init__(num_old)

        def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
            return {"sum": logits.sum()}

    class OwnCall(NoTreatmentLike):
        def __call__(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
            return 2 * logits.sum()

    with pytest.raises(TypeError, match="must define loss_terms"):
        register("NoLoss")(NoLoss)
    with pytest.raises(TypeError, match="not __call__"):  # one way to write a loss: its terms
        register("OwnCall")(OwnCall)
    with pytest.raises(TypeError, match="keyword with a default"):
        register("Required")(Required)
    with pytest.raises(ValueError, match="registered twice"):
        register("MPT_KL")(NoTreatmentLike)
    assert set(registry.METHODS) == before


# --- get_method ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, keyword", [
    ("MPT_KL", "bb"), ("MPT_KL", "lm_weight"), ("MPT_LM", "tau"), ("MPT_KL_nobias", "b"),
    ("MPT_LM_nobias", "b"), ("MPT_nodistillation", "alpha"), ("ELODI", "topk"),
    ("No_Treatment", "b"), ("PCT_Naive", "alpha"), ("PCT_KL", "lm_weight"), ("PCT_LM", "tau"),
])
def test_get_method_refuses_keywords_the_method_does_not_use(name, keyword):
    with pytest.raises(TypeError) as err:
        get_method(name, **{keyword: 1.0})
    message = str(err.value)
    assert name in message and keyword in message
    for accepted in hyperparameters(name):
        assert accepted in message


@pytest.mark.parametrize("name, values, words", [
    ("MPT_KL", {"tau": 0.0}, "tau must be positive"),
    ("MPT_KL", {"b": math.nan}, "b must be finite"),
    ("MPT_LM", {"alpha": -1.0}, "alpha must be >= 0"),
    ("ELODI_topk", {"topk": 0}, "topk must be positive"),
])
def test_get_method_refuses_values_out_of_range(name, values, words):
    with pytest.raises(ValueError, match=words):
        get_method(name, **values)


def test_option_check():
    assert Option().check(1e300) is None and Option().check("text") is None and Option().check(True) is None
    assert Option().check(math.inf) == "must be finite"
    assert Option(positive=True).check(0) == "must be positive"
    assert Option(min=0).check(-0.5) == "must be >= 0" and Option(min=0).check(0) is None


@pytest.mark.parametrize("name", list(TERMS))
def test_term_weights_and_options_name_hyperparameters(name):
    cls = registry.METHODS[name]
    assert set(cls.term_weights) <= hyperparameters(name)
    for param in hyperparameters(name):
        assert registry.option(name, param).help, f"{name}: {param} has no help text"


# --- loss terms ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(TERMS))
def test_each_method_logs_its_named_terms_as_scalars(name, dtype):
    """The terms log.jsonl records, by name, before and after ELODI's warm-up."""
    z, y, old, new = batch(dtype)
    loss_fn = get_method(name)
    for epoch, keys in ((0, ["ce"] if name.startswith("ELODI") else TERMS[name]), (6, TERMS[name])):
        terms = loss_fn.terms(z, y, old_logits=old, new_logits=new, epoch=epoch)
        assert list(terms) == keys
        assert all(t.dim() == 0 and t.dtype == dtype for t in terms.values())


def test_distillation_terms_are_weighted():
    z, y, old, new = batch(torch.float64)
    for name, weight in (("MPT_LM", "lm_weight"), ("PCT_LM", "lm_weight"), ("ELODI", "elodi_old_weight")):
        one = get_method(name, **{weight: 1.0}).loss_terms(z, y, old, new, epoch=6)
        half = get_method(name, **{weight: 0.5}).loss_terms(z, y, old, new, epoch=6)
        key = "lm_old" if name == "ELODI" else "distill_old"
        assert half[key].item() == pytest.approx(0.5 * one[key].item(), rel=1e-12)


@pytest.mark.parametrize("name", list(TERMS))
def test_references_at(name):
    loss_fn = get_method(name)
    for epoch in range(8):
        refs = loss_fn.references_at(epoch)
        assert isinstance(refs, frozenset) and refs <= loss_fn.references
        if name.startswith("ELODI"):
            assert refs == (loss_fn.references if epoch >= 6 else frozenset())
        else:
            assert refs == loss_fn.references
    if name.startswith("ELODI"):
        assert get_method(name, elodi_warmup=0).references_at(0) == {"old", "ensemble"}
        # Before the warm-up ends the loss needs no reference model at all.
        z, y, _, _ = batch(torch.float64)
        assert loss_fn(z, y, epoch=5).item() == pytest.approx(torch.nn.functional.cross_entropy(z, y).item())


# --- flags ----------------------------------------------------------------------------------

def main_parser():
    import main
    return main.build_parser()


def test_todays_flags_come_from_the_methods():
    parser = main_parser()
    actions = {a.dest: a for a in parser._actions}
    options = {opt for a in parser._actions for opt in a.option_strings}
    assert set(FLAGS) <= options
    for name in method_names():
        for param, default in declared_defaults(name).items():
            assert flag(param) in options
            # Unset until take_method_flags: a flag given can be told from a default.
            assert actions[param].default is None
            if isinstance(default, bool):   # a switch: --tau-squared / --no-tau-squared
                assert flag(param).replace("--", "--no-") in options
            else:
                assert actions[param].type is (option(name, param).type if default is None else type(default))
            assert f"default: {'off' if default is None else default}" in actions[param].help
    assert "num_old" not in actions and "--num-old" not in options
    assert "[MPT_KL, MPT_LM, MPT_nodistillation]" in actions["b"].help
    assert "(default: 4.0; imagenet: 1.5)" in actions["b"].help


def built(argv):
    args = parse(main_parser(), argv, section="update")
    ignored = take_method_flags(args)
    return args, method_from_args(args), ignored


@pytest.mark.parametrize("dataset, b", [("cifar100", 4.0), ("imagenet", 1.5)])
def test_method_from_args_uses_the_data_sets_b(dataset, b):
    args, loss_fn, ignored = built(["--dataset", dataset])
    assert (loss_fn.name, loss_fn.b, args.b, ignored) == ("MPT_KL", b, b, {})


def test_method_from_args_builds_with_the_methods_own_hyperparameters(capsys):
    args, loss_fn, ignored = built(["--method", "ELODI_topk", "--topk", "3", "--elodi-warmup", "2", "--tau", "0"])
    assert (loss_fn.topk, loss_fn.elodi_warmup, loss_fn.elodi_old_weight) == (3, 2, 0.6)
    assert ignored == {"--tau": 0.0}  # not ELODI's: not checked, not kept


@pytest.mark.parametrize("argv", [["--b", "2", "--topk", "3"], ["--b", "4.0"], []])
def test_flags_of_another_method_are_ignored_out_loud(argv, capsys):
    """A flag the method does not take, even at its default value, is named in one warning line,
    returned (results.json's ignored_flags) and taken off the settings: the run's identity and
    folder are those of the same command without it."""
    args, loss_fn, ignored = built(["--method", "PCT_KL", *argv])
    plain, _, _ = built(["--method", "PCT_KL"])
    given = dict(zip(argv[::2], map(float, argv[1::2])))
    assert ignored == given and loss_fn.name == "PCT_KL"
    assert "b" not in vars(args) and "topk" not in vars(args)
    assert run_settings(args) == run_settings(plain)
    assert default_output_dir("update", args, "x") == default_output_dir("update", plain, "x")
    err = capsys.readouterr().err
    if given:
        assert err.count("\n") == 1 and err.startswith("warning: --method PCT_KL takes no ")
        assert all(f in err for f in given)
    else:
        assert err == ""


def test_a_config_sets_a_flag_too(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("update:\n  method: No_Treatment\n  b: 4.0\n")
    args = parse(main_parser(), ["--config", str(config)], section="update")
    assert take_method_flags(args) == {"--b": 4.0} and "--b" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--tau", "0"], "--tau must be positive, got 0.0"),
    (["--alpha", "-1"], "--alpha must be >= 0, got -1.0"),
    (["--b", "nan"], "--b must be finite, got nan"),
    (["--method", "MPT_LM", "--lm-weight", "-0.1"], "--lm-weight must be >= 0"),
    (["--method", "ELODI_topk", "--topk", "0"], "--topk must be positive, got 0"),
    (["--method", "ELODI", "--elodi-warmup", "-1"], "--elodi-warmup must be >= 0"),
    (["--method", "ELODI", "--elodi-ensemble-weight", "inf"], "--elodi-ensemble-weight must be finite"),
    (["--method", "ELODI", "--ensemble-size", "0"], "--ensemble-size must be positive"),
    (["--method", "MPT_XL"], "unknown method 'MPT_XL'; choose one of: "),
])
def test_bad_method_values_exit_2(call_script, tiny_data, tmp_path, flags, words):
    out = tmp_path / "run"
    result = call_script("main.py", *common_args(tiny_data), *flags, "--output-dir", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_flags_of_methods_that_disagree(monkeypatch):
    """Two methods with one keyword: the help names both defaults' owner; the types of the
    defaults give the flags' types; values are written back onto the arguments; a default that
    is no number, string or bool (no flag type), or None without an Option's type, is refused."""
    class A(Method):
        options = {"w": Option("the weight", min=0)}

        def __init__(self, w=1.0, num_old=None):
            super().__init__(num_old)
            self.w = w

        def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
            return {"sum": logits.sum()}

    class B(A):
        def __init__(self, w=2.0, k=3, num_old=None):
            super().__init__(w, num_old=num_old)
            self.k = k

    class C(A):
        def __init__(self, shape=(1, 2), num_old=None):
            super().__init__(num_old=num_old)

    class D(A):
        def __init__(self, off=None, num_old=None):   # None without an Option naming its type
            super().__init__(num_old=num_old)

    monkeypatch.setattr(registry, "METHODS", {})
    register("A")(A)
    register("B")(B)
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="A")
    parser.add_argument("--dataset", default="cifar100")
    add_method_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    assert actions["w"].default is None and "(default: each method's own)" in actions["w"].help
    assert "the weight [A, B]" in actions["w"].help
    assert actions["k"].type is int and "(default: 3)" in actions["k"].help

    def build(argv):
        args = parser.parse_args(argv)
        take_method_flags(args)
        return method_from_args(args), args

    loss_fn, args = build([])
    assert loss_fn.w == 1.0 and args.w == 1.0 and "k" not in vars(args)
    loss_fn, args = build(["--method", "B"])
    assert (loss_fn.w, args.w, args.k) == (2.0, 2.0, 3)
    assert build(["--method", "B", "--w", "0.5"])[0].w == 0.5
    with pytest.raises(UserError, match="--w must be >= 0, got -1.0"):
        build(["--method", "B", "--w", "-1"])
    with pytest.raises(TypeError, match="clashes"):
        taken = argparse.ArgumentParser()
        taken.add_argument("--k")
        add_method_flags(taken)
    register("C")(C)
    with pytest.raises(TypeError, match="shape.*a number, a string or a bool.*not tuple"):
        add_method_flags(argparse.ArgumentParser())
    monkeypatch.setattr(registry, "METHODS", {})
    register("D")(D)
    with pytest.raises(TypeError, match="off.*Option"):
        add_method_flags(argparse.ArgumentParser())
