"""The fit verdict (onnxfit.analysis.fit): hand-made figures, the projection rule, next step."""

from __future__ import annotations

from onnxfit.analysis.fit import EXIT_DOES_NOT_FIT, fit_verdict

MIB = 2**20


def test_fits_and_headroom() -> None:
    v = fit_verdict(
        weight_bytes=4 * MIB, arena_bytes=2 * MIB, io_bytes=MIB, budget_bytes=8 * MIB, target="t"
    )
    assert v.fits and v.needed_bytes == 7 * MIB and v.headroom_bytes == MIB
    assert v.line() == "FITS t: uses 7.0 MiB of 8.0 MiB (1.0 MiB free)"
    assert v.next_step() is None


def test_does_not_fit_names_the_first_precision_that_would() -> None:
    # fp32: 40 MiB weights (36 float) + 8 arena + 1 io = 49 MiB; budget 30 MiB
    v = fit_verdict(
        weight_bytes=40 * MIB,
        arena_bytes=8 * MIB,
        io_bytes=MIB,
        budget_bytes=30 * MIB,
        target="small",
        float_weight_bytes=36 * MIB,
    )
    assert not v.fits and v.headroom_bytes == -19 * MIB
    # fp16: 4 + 18 + 4 + 1 = 27 MiB; int8: 4 + 9 + 2 + 1 = 16 MiB
    assert v.projected == {"fp16": 27 * MIB, "int8": 16 * MIB}
    assert v.next_step().startswith("FP16 would need 27.0 MiB")  # type: ignore[union-attr]
    assert "--precision fp16" in v.next_step()  # type: ignore[operator]
    d = v.to_dict()
    assert d["text"].startswith("DOES NOT FIT small: needs 49.0 MiB of 30.0 MiB (19.0 MiB over)")


def test_nothing_narrower_fits() -> None:
    v = fit_verdict(
        weight_bytes=MIB,
        arena_bytes=MIB,
        io_bytes=0,
        budget_bytes=MIB,
        target="t",
        precision="fp16",
    )
    assert v.projected == {"int8": MIB}  # 0.5 + 0.5 MiB: exactly the budget
    assert v.next_step().startswith("INT8 would need 1.0 MiB")  # type: ignore[union-attr]
    v = fit_verdict(
        weight_bytes=4 * MIB, arena_bytes=0, io_bytes=0, budget_bytes=MIB, target="t",
        precision="int8",
    )  # fmt: skip
    assert v.projected == {} and "smaller model" in v.next_step()  # type: ignore[operator]
    assert EXIT_DOES_NOT_FIT == 3


def test_next_need_is_the_step_without_the_command() -> None:
    v = fit_verdict(
        weight_bytes=4 * MIB, arena_bytes=0, io_bytes=0, budget_bytes=3 * MIB, target="t"
    )
    assert v.next_need() == "FP16 would need 2.0 MiB (projected)"
    assert (
        fit_verdict(
            weight_bytes=MIB, arena_bytes=0, io_bytes=0, budget_bytes=2 * MIB, target="t"
        ).next_need()
        is None
    )
