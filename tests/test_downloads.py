"""download_file and the FaceScrub / LFW downloaders against a loopback HTTP server."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest

from utils.datasets import facescrub, lfw_download
from utils.datasets.folders import DatasetError
from utils.download import (
    ChecksumError,
    DownloadError,
    DownloadTimeoutError,
    DownloadTooLargeError,
    HTTPStatusError,
    IncompleteDownloadError,
    download_file,
    part_path,
)
from utils.faces.image_io import jpeg_bytes, read_image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


# --- download_file ---------------------------------------------------------------------------


def test_download_verifies_and_renames(http_server, payload, tmp_path):
    url = http_server.add_file("files/blob.bin", payload)
    dest = download_file(url, tmp_path / "out" / "blob.bin", sha256=sha256(payload),
                         sha1=hashlib.sha1(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload
    assert not part_path(dest).exists()


def test_existing_verified_file_is_not_downloaded_again(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    dest = tmp_path / "blob.bin"
    download_file(url, dest, sha256=sha256(payload), progress=False)
    download_file(url, dest, sha256=sha256(payload), progress=False)
    assert len(http_server.requests_for("blob.bin")) == 1


def test_dead_link_raises_http_error_and_leaves_nothing(http_server, tmp_path):
    http_server.fail("gone.bin", 404)
    with pytest.raises(HTTPStatusError) as info:
        download_file(http_server.url("gone.bin"), tmp_path / "gone.bin", progress=False)
    assert info.value.status == 404
    assert "gone.bin" in str(info.value) and "404" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    # Port 9 on loopback: nothing listens there, the connection is refused at once.
    with pytest.raises(DownloadError, match="cannot reach"):
        download_file("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", progress=False, retries=0)


def test_url_with_spaces_and_non_ascii_is_encoded(http_server, payload, tmp_path):
    url = http_server.add_file("files/Zoë Saldana 1.jpg", payload)
    assert download_file(url, tmp_path / "z.jpg", progress=False).read_bytes() == payload


def test_malformed_url_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError):
        download_file("no-scheme/file.bin", tmp_path / "x.bin", progress=False)


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_only_http_and_https_urls_are_fetched(scheme, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"a private local file")
    dest = tmp_path / "out" / "copy.txt"
    url = f"file://{secret}" if scheme == "file" else "ftp://127.0.0.1/secret.txt"
    with pytest.raises(DownloadError, match=f"only http:// and https:// URLs.*not {scheme}://") as info:
        download_file(url, dest, sha256="0" * 64, progress=False)
    assert sha256(secret.read_bytes()) not in str(info.value)
    assert not dest.exists() and not part_path(dest).exists()


def test_checksum_error_names_only_the_expected_digest(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    with pytest.raises(ChecksumError) as info:
        download_file(url, tmp_path / "blob.bin", sha256="0" * 64, progress=False)
    assert "0" * 64 in str(info.value) and sha256(payload) not in str(info.value)


def test_announced_size_above_the_limit_is_refused_before_reading(http_server, payload, tmp_path):
    url = http_server.add_file("big.bin", payload)
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadTooLargeError, match="limit of 100,000 bytes.*300,000 bytes announced"):
        download_file(url, dest, progress=False, max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


def test_unannounced_size_above_the_limit_is_stopped_while_reading(http_server, payload, tmp_path):
    url = http_server.add_file("big.bin", payload)
    http_server.hide_length("big.bin")
    with pytest.raises(DownloadTooLargeError, match="limit of 100,000 bytes"):
        download_file(url, tmp_path / "big.bin", progress=False, max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []
    assert download_file(url, tmp_path / "big.bin", progress=False).read_bytes() == payload  # default limit


def test_existing_destination_without_a_digest_is_fetched_again(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"left over from something else")
    assert download_file(url, dest, progress=False).read_bytes() == payload
    assert len(http_server.requests_for("blob.bin")) == 1


def test_existing_destination_with_a_wrong_digest_is_replaced(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"damaged copy")
    assert download_file(url, dest, sha256=sha256(payload), progress=False).read_bytes() == payload


def test_wrong_checksum_deletes_the_file(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    dest = tmp_path / "blob.bin"
    with pytest.raises(ChecksumError) as info:
        download_file(url, dest, sha256="0" * 64, progress=False)
    assert info.value.dest == dest and "blob.bin" in str(info.value)
    assert info.value.actual == sha256(payload)
    assert not dest.exists() and not part_path(dest).exists()


def test_resumes_an_existing_part_file_with_a_range_request(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(payload[:123_456])
    download_file(url, dest, sha256=sha256(payload), progress=False)
    assert dest.read_bytes() == payload
    assert [r.range for r in http_server.requests_for("blob.bin")] == ["bytes=123456-"]


def test_cut_connection_is_resumed_automatically(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    http_server.cut_short("blob.bin", after_bytes=100_000)
    dest = download_file(url, tmp_path / "blob.bin", sha256=sha256(payload), progress=False)
    assert dest.read_bytes() == payload
    ranges = [r.range for r in http_server.requests_for("blob.bin")]
    assert ranges == [None, "bytes=100000-"]


def test_cut_connection_without_retries_keeps_the_part_for_a_later_run(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    http_server.cut_short("blob.bin", after_bytes=50_000)
    dest = tmp_path / "blob.bin"
    with pytest.raises(IncompleteDownloadError, match="50000 of 300000"):
        download_file(url, dest, sha256=sha256(payload), progress=False, retries=0)
    assert part_path(dest).stat().st_size == 50_000 and not dest.exists()
    download_file(url, dest, sha256=sha256(payload), progress=False, retries=0)  # a later run resumes
    assert dest.read_bytes() == payload
    assert http_server.requests_for("blob.bin")[-1].range == "bytes=50000-"


def test_server_ignoring_range_gives_a_fresh_download(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    http_server.ignore_range("blob.bin")
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(b"x" * 1000)  # stale bytes that must not end up in the file
    download_file(url, dest, sha256=sha256(payload), progress=False)
    assert dest.read_bytes() == payload


def test_oversized_part_file_is_replaced(http_server, payload, tmp_path):
    url = http_server.add_file("small.bin", payload[:1000])
    dest = tmp_path / "small.bin"
    part_path(dest).write_bytes(payload[:5000])  # longer than the file: the server answers 416
    download_file(url, dest, sha256=sha256(payload[:1000]), progress=False)
    assert dest.read_bytes() == payload[:1000]


def test_no_resume_discards_the_part(http_server, payload, tmp_path):
    url = http_server.add_file("blob.bin", payload)
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(payload[:1000])
    download_file(url, dest, progress=False, resume=False)
    assert dest.read_bytes() == payload
    assert http_server.requests_for("blob.bin")[0].range is None


def test_stalled_server_times_out(http_server, payload, tmp_path):
    url = http_server.add_file("slow.bin", payload)
    http_server.stall("slow.bin", 1.5)
    with pytest.raises(DownloadTimeoutError, match="0.3 s"):
        download_file(url, tmp_path / "slow.bin", timeout=0.3, retries=0, progress=False)


# --- FaceScrub -------------------------------------------------------------------------------


def gradient_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 256, 3)
    return ((base + xs[..., None] * 2 + ys[..., None]) % 256).astype(np.uint8)


def write_list(path, rows) -> None:
    lines = ["name\timage_id\tface_id\turl\tbbox\tsha256"]
    lines += ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def facescrub_list(http_server, tmp_path):
    """A list with 3 good faces, a dead link, a wrong checksum and a non-image."""
    images = {i: jpeg_bytes(gradient_image(120, 160, i)) for i in range(3)}
    for i, data in images.items():
        http_server.add_file(f"img/{i}.jpg", data)
    http_server.fail("img/dead.jpg", 404)
    http_server.add_file("img/page.jpg", b"<html>not found</html>")
    rows = [
        ("Aaron Eckhart", 1, 101, http_server.url("img/0.jpg"), "10,20,90,100", sha256(images[0])),
        ("Aaron Eckhart", 2, 102, http_server.url("img/1.jpg"), "0,0,160,120", sha256(images[1])),
        ("Anne Hathaway", 3, 201, http_server.url("img/2.jpg"), "40,30,120,110", sha256(images[2])),
        ("Anne Hathaway", 4, 202, http_server.url("img/dead.jpg"), "1,1,50,50", "0" * 64),
        ("Anne Hathaway", 5, 203, http_server.url("img/0.jpg"), "1,1,50,50", "f" * 64),
        ("Brad Pitt", 6, 301, http_server.url("img/page.jpg"), "1,1,50,50", sha256(b"<html>not found</html>")),
    ]
    path = tmp_path / "facescrub_actors.txt"
    write_list(path, rows)
    return path, images


def test_facescrub_downloads_crops_and_reports(http_server, facescrub_list, tmp_path):
    list_path, images = facescrub_list
    out = tmp_path / "faces"
    report = facescrub.download_faces(facescrub.parse_list(list_path), out, workers=4, progress=False)
    assert report.downloaded == 3
    assert sorted(report.failed) == ["Anne_Hathaway/202.jpg", "Anne_Hathaway/203.jpg", "Brad_Pitt/301.jpg"]
    assert "404" in report.failed["Anne_Hathaway/202.jpg"]
    assert "checksum" in report.failed["Anne_Hathaway/203.jpg"]
    assert "image" in report.failed["Brad_Pitt/301.jpg"]
    crop = read_image(out / "Aaron_Eckhart" / "101.jpg")
    assert crop.shape == (80, 80, 3)  # bbox 10,20,90,100 with no margin
    source = gradient_image(120, 160, 0)[20:100, 10:90].astype(int)
    assert np.abs(crop.astype(int) - source).mean() < 6  # same pixels up to JPEG loss
    assert read_image(out / "Anne_Hathaway" / "201.jpg").shape == (80, 80, 3)
    assert not any(p.name.endswith(".part") for p in out.rglob("*"))


def test_facescrub_margin_is_clamped_to_the_image(http_server, facescrub_list, tmp_path):
    list_path, _ = facescrub_list
    entries = [e for e in facescrub.parse_list(list_path) if e.face_id in ("101", "102")]
    out = tmp_path / "faces"
    facescrub.download_faces(entries, out, workers=2, margin=0.25, progress=False)
    # bbox x 10..90, y 20..100 grows by 20 px a side to x -10..110, y 0..120; clamped to x 0..110
    assert read_image(out / "Aaron_Eckhart" / "101.jpg").shape == (120, 110, 3)
    assert read_image(out / "Aaron_Eckhart" / "102.jpg").shape == (120, 160, 3)  # whole image


def test_facescrub_rerun_skips_done_and_dead_faces(http_server, facescrub_list, tmp_path):
    list_path, _ = facescrub_list
    out = tmp_path / "faces"
    entries = facescrub.parse_list(list_path)
    first = facescrub.download_faces(entries, out, workers=4, progress=False)
    state = json.loads((out / facescrub.STATE_FILE).read_text())
    assert sorted(state["failed"]) == sorted(first.failed) and len(first.failed) == 3
    before = len(http_server.requests)
    report = facescrub.download_faces(entries, out, workers=4, progress=False)
    assert len(http_server.requests) == before  # nothing fetched again
    assert report.already_present == 3 and report.skipped_known_failures == 3 and not report.failed
    retry = facescrub.download_faces(entries, out, workers=4, progress=False, retry_failed=True)
    assert len(http_server.requests) == before + 3 and len(retry.failed) == 3


def test_facescrub_resumes_an_interrupted_image(http_server, facescrub_list, tmp_path):
    list_path, images = facescrub_list
    entry = next(e for e in facescrub.parse_list(list_path) if e.face_id == "201")
    out = tmp_path / "faces"
    http_server.cut_short("img/2.jpg", after_bytes=1000, times=2)
    first = facescrub.download_faces([entry], out, workers=1, progress=False)  # one automatic retry
    assert first.downloaded == 0 and "connection" in first.failed["Anne_Hathaway/201.jpg"]
    second = facescrub.download_faces([entry], out, workers=1, progress=False, retry_failed=True)
    assert second.downloaded == 1
    assert [r.range for r in http_server.requests_for("img/2.jpg")] == [None, "bytes=1000-", "bytes=2000-"]


def test_facescrub_cli(http_server, facescrub_list, tmp_path, capsys):
    list_path, _ = facescrub_list
    out = tmp_path / "faces"
    assert facescrub.main([str(list_path), str(out), "--workers", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 downloaded" in printed and "3 failed" in printed and "Brad_Pitt/301.jpg" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Aaron_Eckhart", "Anne_Hathaway"]


def test_facescrub_refuses_a_folder_it_did_not_write(http_server, facescrub_list, tmp_path, capsys):
    list_path, _ = facescrub_list
    out = tmp_path / "faces"
    (out / "Aaron_Eckhart").mkdir(parents=True)
    (out / "Aaron_Eckhart" / "101.jpg").write_bytes(b"the user's own picture")
    (out / "notes.txt").write_text("mine")
    assert facescrub.main([str(list_path), str(out), "--no-progress"]) == 1
    assert "not empty" in capsys.readouterr().err and not http_server.requests
    assert facescrub.main([str(list_path), str(out), "--no-progress", "--force"]) == 0
    assert "2 downloaded" in capsys.readouterr().out  # 101 is not fetched: its place is taken
    assert (out / "Aaron_Eckhart" / "101.jpg").read_bytes() == b"the user's own picture"
    assert (out / "notes.txt").read_text() == "mine" and (out / "Anne_Hathaway" / "201.jpg").is_file()
    assert facescrub.main([str(list_path), str(out), "--no-progress"]) == 0  # its own folder now


def test_facescrub_never_copies_local_files(tmp_path, capsys):
    secret = tmp_path / "private.jpg"
    secret.write_bytes(jpeg_bytes(gradient_image(60, 60, 3)))
    digest = sha256(secret.read_bytes())
    path = tmp_path / "list.txt"
    write_list(path, [("Eve Local", 1, 11, f"file://{secret}", "0,0,30,30", digest)])
    out = tmp_path / "faces"
    assert facescrub.main([str(path), str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "0 downloaded" in printed and "Eve_Local/11.jpg" in printed and "only http" in printed
    assert not (out / "Eve_Local").exists()
    state = (out / facescrub.STATE_FILE).read_text()
    assert "only http" in state and digest not in state and digest not in printed


def test_facescrub_bad_list_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "list.txt"
    path.write_text("name\timage_id\tface_id\turl\tbbox\tsha256\nA B\t1\t2\thttp://x/y.jpg\t1,2,3\tabc\n")
    with pytest.raises(DatasetError, match=r"list\.txt:2.*bbox"):
        facescrub.parse_list(path)
    assert facescrub.main([str(path), str(tmp_path / "out")]) == 1
    assert "list.txt:2" in capsys.readouterr().err


# --- LFW -------------------------------------------------------------------------------------


def make_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def fake_lfw(http_server):
    """A tiny lfw.tgz and protocol files on the loopback server, with their RemoteFile entries."""
    face = jpeg_bytes(gradient_image(250, 250, 7))
    archive = make_archive({
        "lfw/Ann_Smith/Ann_Smith_0001.jpg": face,
        "lfw/Ann_Smith/Ann_Smith_0002.jpg": face,
        "lfw/Bob_Jones/Bob_Jones_0001.jpg": face,
    })
    http_server.add_file("lfw/lfw.tgz", archive)
    protocol = {}
    for spec in lfw_download.PROTOCOL_FILES:
        text = f"contents of {spec.name}\n".encode()
        http_server.add_file(f"lfw/{spec.name}", text)
        protocol[spec.name] = lfw_download.RemoteFile(spec.name, sha256(text))
    return {
        "base_url": http_server.url("lfw/"),
        "archive": lfw_download.RemoteFile("lfw.tgz", sha256(archive)),
        "protocol": tuple(protocol.values()),
    }


def test_lfw_download_extracts_and_fetches_protocol(fake_lfw, tmp_path):
    root = lfw_download.ensure_lfw(tmp_path / "data" / "lfw", base_url=fake_lfw["base_url"],
                                   archive=fake_lfw["archive"], protocol_files=fake_lfw["protocol"],
                                   progress=False)
    assert root == tmp_path / "data" / "lfw"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == [
        "Ann_Smith/Ann_Smith_0001.jpg", "Ann_Smith/Ann_Smith_0002.jpg", "Bob_Jones/Bob_Jones_0001.jpg"]
    protocol_dir = tmp_path / "data" / "lfw-protocol"
    assert (protocol_dir / "pairs.txt").read_text() == "contents of pairs.txt\n"
    assert sorted(os.listdir(tmp_path / "data")) == ["lfw", "lfw-protocol"]  # archive removed


def test_ensure_lfw_returns_an_existing_copy_without_network(tmp_path):
    # The shared copy is complete; the base URL points nowhere, so any download would fail.
    from utils.paths import lfw_dir

    assert lfw_download.ensure_lfw(base_url="http://127.0.0.1:9/") == lfw_dir()


def test_lfw_download_wrong_checksum(fake_lfw, tmp_path):
    with pytest.raises(ChecksumError, match="lfw.tgz"):
        lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"],
                                archive=lfw_download.RemoteFile("lfw.tgz", "0" * 64),
                                protocol_files=fake_lfw["protocol"], progress=False)
    assert not (tmp_path / "lfw").exists() and not (tmp_path / "lfw.tgz").exists()


def test_lfw_download_resumes_after_a_cut(fake_lfw, http_server, tmp_path):
    http_server.cut_short("lfw/lfw.tgz", after_bytes=500)
    lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"], archive=fake_lfw["archive"],
                            protocol_files=fake_lfw["protocol"], progress=False)
    assert [r.range for r in http_server.requests_for("lfw/lfw.tgz")] == [None, "bytes=500-"]
    assert (tmp_path / "lfw" / "Bob_Jones" / "Bob_Jones_0001.jpg").is_file()


def test_lfw_download_dead_link(fake_lfw, http_server, tmp_path, capsys):
    http_server.fail("lfw/lfw.tgz", 404)
    with pytest.raises(HTTPStatusError):
        lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"], archive=fake_lfw["archive"],
                                protocol_files=fake_lfw["protocol"], progress=False)
    assert lfw_download.main(["--dest", str(tmp_path / "cli"), "--base-url", fake_lfw["base_url"]]) == 1
    assert "404" in capsys.readouterr().err


def test_lfw_download_keeps_the_users_own_archive(fake_lfw, http_server, tmp_path):
    served = http_server.root / "lfw" / "lfw.tgz"
    (tmp_path / "lfw.tgz").write_bytes(served.read_bytes())  # the user's verified copy
    lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"], archive=fake_lfw["archive"],
                            protocol_files=fake_lfw["protocol"], progress=False)
    assert (tmp_path / "lfw.tgz").read_bytes() == served.read_bytes()
    assert not http_server.requests_for("lfw/lfw.tgz") and (tmp_path / "lfw" / "Ann_Smith").is_dir()


def test_lfw_download_never_replaces_a_foreign_file(fake_lfw, http_server, tmp_path):
    (tmp_path / "lfw.tgz").write_bytes(b"someone else's lfw.tgz")
    with pytest.raises(DatasetError, match="in the way"):
        lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"], archive=fake_lfw["archive"],
                                protocol_files=fake_lfw["protocol"], progress=False)
    assert (tmp_path / "lfw.tgz").read_bytes() == b"someone else's lfw.tgz"
    (tmp_path / "lfw.tgz").unlink()
    (tmp_path / ".lfw.extracting").mkdir()
    (tmp_path / ".lfw.extracting" / "work.txt").write_text("not the tool's")
    with pytest.raises(DatasetError, match="not made by this tool"):
        lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"], archive=fake_lfw["archive"],
                                protocol_files=fake_lfw["protocol"], progress=False)
    assert (tmp_path / ".lfw.extracting" / "work.txt").read_text() == "not the tool's"


def test_lfw_download_stops_at_the_size_limit(fake_lfw, tmp_path):
    archive = lfw_download.RemoteFile("lfw.tgz", fake_lfw["archive"].sha256, max_bytes=100)
    with pytest.raises(DownloadTooLargeError, match="limit of 100 bytes"):
        lfw_download.ensure_lfw(tmp_path / "lfw", base_url=fake_lfw["base_url"], archive=archive,
                                protocol_files=fake_lfw["protocol"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_lfw_archive_with_path_traversal_is_refused(http_server, tmp_path):
    evil = make_archive({"lfw/A/A_0001.jpg": b"x", "lfw/../../escaped.txt": b"owned"})
    http_server.add_file("lfw/lfw.tgz", evil)
    with pytest.raises(DatasetError, match="unsafe"):
        lfw_download.ensure_lfw(tmp_path / "data" / "lfw", base_url=http_server.url("lfw/"),
                                archive=lfw_download.RemoteFile("lfw.tgz", sha256(evil)),
                                protocol_files=(), progress=False)
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "data" / "lfw").exists()
