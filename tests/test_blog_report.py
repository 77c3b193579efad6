"""The post's claims checked and its exercises answered; arithmetic written out in each test."""
from inspector.blog import check, claims, exercise_1, exercise_2, exercise_4, exercise_5, plot_scaling, scaling
from inspector.cli import main


def test_exactly_the_posts_wrong_figures_are_marked():
    results = {c.text: c for c in map(check, claims())}
    wrong = {text for text, c in results.items() if not c.ok}
    assert wrong == {"CNN 'conv -> pool -> FC' (as the text describes it): 38 parameters",
                     "'1,792 weights' (the code's label)", "'Reduction: 8404x' (printed by the post's code)"}
    reduction = results["'Reduction: 8404x' (printed by the post's code)"]
    # dense first layer 224*224*3 * 100 + 100 = 15,052,900 params; conv 3*3*3 * 64 + 64 = 1,792
    assert reduction.measured == (224 * 224 * 3 * 100 + 100) / (3 * 3 * 3 * 64 + 64)
    assert round(reduction.measured, 2) == 8400.06 and reduction.stated == 8404 and not reduction.ok
    assert round(results["'4x fewer parameters' (154 vs 38)"].measured, 2) == round(154 / 38, 2) == 4.05
    assert round(results["'8,700x fewer parameters in the first layer' (weights only)"].measured) == \
        round(15_052_800 / 1_728) == 8711
    assert results["'1,792 weights' (the code's label)"].measured == 3 * 3 * 3 * 64 == 1728


def test_exercise_1():
    f = exercise_1().figures
    assert f["ann_params"] == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 2 + 2) == 2642
    assert f["cnn_params"] == (9 * 8 + 8) + (3 * 3 * 8 * 2 + 2) == 226
    assert round(f["ratio"], 2) == round(2642 / 226, 2) == 11.69


def test_exercise_2():
    f = exercise_2().figures
    assert f["dense_weights"] == 100 * 8 * 8 == 6400 and f["conv_weights"] == 9 and f["nonzero_weights"] == 576


def test_exercise_4_macs_per_parameter():
    f = exercise_4().figures
    assert round(f["resnet_macs_per_param"]) == round(4_089_184_256 / 25_557_032) == 160
    assert abs(f["dense_params"] - f["resnet_params"]) / f["resnet_params"] < 0.01
    assert abs(f["dense_macs_per_param"] - 1) < 0.001


def test_exercise_5():
    f = exercise_5().figures
    assert f["macs_per_filter_per_position"] == 3 * 3 * 3 == 27
    assert f["same_macs"] == 224 * 224 * 64 * 27 == 86_704_128
    assert f["valid_macs"] == 222 * 222 * 64 * 27 == 85_162_752


def test_scaling_slopes(tmp_path):
    s = scaling()
    assert abs(s.slope("dense_params") - 2) <= 0.05
    assert abs(s.slope("conv_params")) <= 0.05
    assert abs(s.slope("conv_macs") - 2) <= 0.05
    assert s.dense_params[s.sides.index(224)] == 15_052_900
    plot_scaling(s, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_blog_command(capsys):
    assert main(["blog"]) == 0
    out = capsys.readouterr().out
    assert out.count("✗") == 3 and "8,400.06" in out
