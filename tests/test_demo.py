from mei_service import demo


def test_demo_recovers_receptive_fields_and_writes_the_figure(tmp_path):
    mean_correlation = demo.main(["--neurons", "3", "--iterations", "150", "--out", str(tmp_path)])
    assert mean_correlation > 0.95
    figure = tmp_path / "meis.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
