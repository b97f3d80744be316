"""The launched web demo, driven by gradio_client over HTTP on 127.0.0.1, `sam3d app`, what
importing the app costs, and its slice slider."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, save_nifti

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from core.clicks import Click, PromptSet, first_click  # noqa: E402
from core.io import load_image, save_image, save_label  # noqa: E402
from core.mesh import load_mesh  # noqa: E402
from core.synthetic import make_heart_phantom  # noqa: E402

LV = 2
MAX_UPLOAD = "2mb"  # a 64^3 heart is ~0.9 MB gzipped


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    """The app as `sam3d app` starts it (launch(): model loaded once, adapters preloaded)."""
    from gradio_app.app import close_app, launch

    demo = launch(
        "127.0.0.1", free_port(), prevent_thread_lock=True, max_file_size=MAX_UPLOAD, quiet=True
    )
    # warmed up before serving: the first visitor's click runs at full speed
    assert demo.sam3d_engine.reconstructor.warm and demo.sam3d_engine.calls == 0
    yield demo
    close_app(demo)
    assert not demo.sam3d_files.root.exists()  # the app's temporary files are gone


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    downloads = tmp_path_factory.mktemp("downloads")
    return Client(app.local_url, verbose=False, download_files=str(downloads))


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    d = tmp_path_factory.mktemp("heart")
    image, label = make_heart_phantom(21)
    path = save_image(image, d / "heart21.nii.gz")
    save_label(label, d / "heart21-label.nii.gz")
    return path, image, label, first_click(label.data == LV)


def call(client, path, click, **kw):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(path)),
        click.axis,
        click.slice_idx,
        [[click.row, click.col]],
        api_name="/reconstruct",
        **kw,
    )


pytestmark = [
    pytest.mark.slow,
    # gradio's own queue code, not ours (pandas 3 deprecations)
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning"),
]


def test_only_the_reconstruct_endpoint_is_public(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/reconstruct"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/reconstruct"]["parameters"]]
    assert params == [
        "volume",
        "axis",
        "slice_index",
        "points",
        "negative_points",
        "mode",
        "adapter",
        "modality",
        "zoom_in",
        "indices",
    ]


def test_api_reconstruct_equals_the_engine_on_the_inputs_grid(app, client, heart):
    path, image, label, c = heart
    mask_path, mesh_path, info = call(client, path, c)
    mask = nib.load(mask_path)
    np.testing.assert_allclose(mask.affine, nib.load(str(path)).affine)
    direct = app.sam3d_engine.predict(load_image(path), PromptSet((c,)))
    np.testing.assert_array_equal(np.asarray(mask.dataobj).astype(bool), direct.mask)
    assert load_mesh(mesh_path).n_vertices == direct.mesh.n_vertices
    assert set(info["timings_ms"]) >= {"model", "mesh", "total"}
    assert info["voxels"] == int(direct.mask.sum()) and info["mode"] == "volume"


def test_api_negative_points_mode_and_adapter(app, client, heart):
    path, image, label, c = heart
    neg = Click(c.axis, c.slice_idx, c.row + 12, c.col, positive=False)
    _, _, info = client.predict(
        __import__("gradio_client").handle_file(str(path)),
        c.axis,
        c.slice_idx,
        [[c.row, c.col]],
        [[neg.row, neg.col]],
        "slice",
        "headneck-ct",
        api_name="/reconstruct",
    )
    assert info["mode"] == "slice" and info["adapter"] == "headneck-ct"
    direct = app.sam3d_engine.predict(
        load_image(path), PromptSet((c, neg)), weights="headneck-ct", mode="slice"
    )
    assert info["voxels"] == int(direct.mask.sum())


def test_api_zoom_in_reaches_the_engine(app, client, heart):
    path, image, label, _ = heart
    c = first_click(label.data == 1)  # the LA: a compact chamber the engine zooms in on
    from gradio_client import handle_file

    args = [handle_file(str(path)), c.axis, c.slice_idx, [[c.row, c.col]], None, "volume"]
    _, _, plain = client.predict(*args, "base", "ct", False, api_name="/reconstruct")
    _, _, zoomed = client.predict(*args, "base", "CT", True, api_name="/reconstruct")
    assert plain["zoom_in"] is False and plain["passes"] == 2
    assert plain["modality"] == zoomed["modality"] == "ct"  # any case
    assert zoomed["zoom_in"] is True and zoomed["passes"] == 3  # first, zoomed, refinement
    direct = app.sam3d_engine.predict(load_image(path), PromptSet((c,)), zoom_in=True)
    assert zoomed["voxels"] == int(direct.mask.sum()) and direct.cube.spacing < 2.0


@pytest.mark.parametrize(
    "case, message",
    [
        ("not nifti", "notes.txt: not a NIfTI file"),
        ("2d", "flat.nii.gz: expected a 3D volume, got 2D"),
        ("outside", "heart21.nii.gz: click (99, 5) on axis 2 slice"),
        ("adapter", "unknown weights 'liver'; choose one of base, headneck-ct"),
        ("negative only", "give at least one positive point"),
    ],
)
def test_api_bad_requests_get_clear_errors(client, heart, tmp_path, case, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path, _, _, c = heart
    args = [handle_file(str(path)), 2, c.slice_idx, [[c.row, c.col]], None, "volume", "base"]
    if case == "not nifti":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
        args[0] = handle_file(str(p))
    elif case == "2d":
        args[0] = handle_file(
            str(save_nifti(np.zeros((8, 8), np.float32), np.eye(4), tmp_path / "flat.nii.gz"))
        )
    elif case == "outside":
        args[3] = [[99, 5]]
    elif case == "adapter":
        args[6] = "liver"
    elif case == "negative only":
        args[3], args[4] = [], [[c.row, c.col]]
    with pytest.raises(AppError) as info:
        client.predict(*args, api_name="/reconstruct")
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def _raw_call(app, data):
    """Call the endpoint over plain HTTP (no gradio_client), return the SSE text."""
    import httpx

    base = app.local_url.rstrip("/") + "/gradio_api"
    r = httpx.post(f"{base}/call/reconstruct", json={"data": data}, timeout=30)
    r.raise_for_status()
    eid = r.json()["event_id"]
    return httpx.get(f"{base}/call/reconstruct/{eid}", timeout=60).text


def test_api_reads_only_uploaded_files(app, heart):
    path, _, _, c = heart
    rest = [2, c.slice_idx, [[c.row, c.col]], None, "volume", "base", "ct", False, "ras"]
    # a server path given as a file: gradio refuses files that were not uploaded
    out = _raw_call(app, [{"path": str(path), "meta": {"_type": "gradio.FileData"}}, *rest])
    assert "event: error" in out and "mask.nii.gz" not in out
    # a server path given as a string: refused by the endpoint
    out = _raw_call(app, [str(path), *rest])
    assert "event: error" in out and "must be an uploaded file" in out


def test_upload_size_limit(app, client, tmp_path):
    import httpx
    from gradio_client import handle_file

    big = tmp_path / "big.nii.gz"
    big.write_bytes(np.random.default_rng(0).bytes(3_000_000))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), 2, 1, [[1, 1]], api_name="/reconstruct")
    # the server enforces it too (not only the client)
    with big.open("rb") as f:
        r = httpx.post(
            app.local_url.rstrip("/") + "/gradio_api/upload",
            files={"files": ("big.nii.gz", f)},
            timeout=30,
        )
    assert r.status_code == 413


def test_page_is_served(app):
    import httpx

    r = httpx.get(app.local_url, timeout=30)
    assert r.status_code == 200 and "sam3d" in r.text


def test_shared_engine_never_mixes_adapters_between_threads(app, heart):
    """Sessions asking for different weights at the same time each get their own."""
    path, _, _, c = heart
    engine = app.sam3d_engine
    volume = load_image(path)
    prompts = PromptSet((c,))
    expected = {
        w: int(engine.predict(volume, prompts, weights=w).mask.sum()) for w in engine.choices
    }
    assert len(set(expected.values())) == len(expected)  # the weights give different masks
    got, errors = [], []

    def work(w):
        try:
            got.append((w, int(engine.predict(volume, prompts, weights=w).mask.sum())))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in list(engine.choices) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(n == expected[w] for w, n in got) and len(got) == len(threads)


# --------------------------------------------------------------------------------------------
# sam3d app


def test_cli_app_help():
    res = subprocess.run(
        [sys.executable, "-m", "core", "app", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    for flag in ("--host", "--port", "--share", "--max-file-size", "--adapter"):
        assert flag in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "gradio_app", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0 and "--share" in res.stdout


def test_cli_app_without_gradio_says_how_to_install(monkeypatch, capsys):
    import importlib.util

    from core.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    assert main(["app"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "sam3d app: error: gradio is not installed; install the extra with "
        "pip install 'sam3d-napari[gradio]'"
    )


def test_cli_app_busy_port_is_one_line(app, capsys):
    from core.cli import main

    port = int(app.local_url.rstrip("/").rsplit(":", 1)[1])
    assert main(["app", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sam3d app: error: cannot serve on 127.0.0.1:{port}")
    assert "Traceback" not in err


def test_importing_gradio_app_loads_no_model():
    code = textwrap.dedent(
        """
        import sys
        import gradio_app, gradio_app.app, gradio_app.handlers, gradio_app.api, gradio_app.page
        heavy = [m for m in ("torch", "peft", "core.model", "core.engine") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_slice_slider_of_a_one_slice_axis_cannot_move():
    """A 2D image stored as 3D has one slice on its third axis; the slider's range keeps two
    values (gradio needs them), so it must not be movable to the slice 1 that is not there."""
    from gradio_app.app import _slice_slider

    one = _slice_slider(1, 0)
    assert one.interactive is False and one.value == 0
    many = _slice_slider(40, 12)
    assert many.interactive is True and (many.minimum, many.maximum, many.value) == (0, 39, 12)
