"""The dataset loaders (loadgen/datasets.py): each format's field mapping from real files written in
a temporary directory (JSONL, JSON, text, Parquet with Hugging Face Image structs), media paths
under the media root, the chat body of a video-file clip, and the one-line errors of bad inputs."""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_loadgen_diffusion import DiffusionStandIn

from jouletrace.cli import main as jouletrace_main
from jouletrace.loadgen.client import build_body
from jouletrace.loadgen.datasets import DatasetError, load_dataset
from jouletrace.loadgen.media import synthetic_image
from jouletrace.loadgen.plan import Sampling, plan
from jouletrace.loadgen.requests import DiffusionParams, Media
from jouletrace.loadgen.runner import RunConfig, run
from jouletrace.loadgen.tasks import task

PNG = synthetic_image(0, 4, 4)
JPEG = b"\xff\xd8\xff\xe0" + bytes(12)
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(32)  # only the bytes are forwarded


def write(path, rows, jsonl=True):
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def llava_row(video, question="<image>\nWhat happens?", answer="a" * 40):
    return {"id": video, "video": video, "data_source": "academic",
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer},
                              {"from": "human", "value": "Then?"}, {"from": "gpt", "value": "b" * 8}]}


# ---- field mappings ------------------------------------------------------------------------------

def test_loaders_map_the_public_formats(tmp_path):
    chat = task("chat")
    arena = write(tmp_path / "arena.jsonl", [{"conversation_a": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "more"}]}, {"role": "assistant", "content": "y" * 8}]}])
    rs = load_dataset(arena, "arena", chat)
    assert [r.prompt for r in rs] == ["hi", "more"] and [r.expected_output_tokens for r in rs] == [10, 2]
    assert rs[1].history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 40}]
    assert all(r.images == [] for r in rs)
    share = write(tmp_path / "sg.json", [{"conversations": [{"from": "human", "value": "q"},
                                                            {"from": "gpt", "value": "a" * 20}]},
                                         {"conversations": [{"from": "human", "value": "alone"}]}], jsonl=False)
    rs = load_dataset(share, "sharegpt", chat)
    assert [(r.prompt, r.expected_output_tokens) for r in rs] == [("q", 5)]
    gpqa = write(tmp_path / "gpqa.jsonl", [{"Question": "2+2?", "Correct Answer": "4", "Incorrect Answer 1": "3",
                                            "Incorrect Answer 2": "5", "Incorrect Answer 3": "22"}])
    p = load_dataset(gpqa, "gpqa", task("reasoning"))[0].prompt
    assert p.startswith("2+2?") and all(f"{c}) " in p for c in "ABCD") and "4" in p
    fim = write(tmp_path / "fim.jsonl", [{"prefix": "def f(", "suffix": "):\n", "middle": "abcd"}])
    r = load_dataset(fim, "fim", task("code"), fim_template="<P>{prefix}<S>{suffix}<M>")[0]
    assert r.prompt == "<P>def f(<S>):\n<M>" and r.expected_output_tokens == 1 and r.api == "completion"


def test_generic_jsonl_with_media_and_trace(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    f = write(tmp_path / "d.jsonl", [{"prompt": "p1", "output_tokens": 7, "images": ["a.png"], "timestamp": 100.5},
                                     {"prompt": "p2", "timestamp": 102.0}])
    rs = load_dataset(f, "jsonl", task("image-chat"))
    assert rs[0].images == [Media(PNG, "image/png")] and rs[0].expected_output_tokens == 7
    assert [r.arrival_s for r in rs] == [0.0, 1.5]
    again = plan(task("image-chat"), 4, 0, Sampling(), rs)
    assert [r.arrival_s for r in again] == [0.0, 1.5, 2.5, 4.0]  # the trace repeats after its end


def test_vision_arena_parquet_attaches_its_images_to_the_first_user_turn(tmp_path):
    """VisionArena-Chat as published: Parquet, `conversation` in [user, assistant] pairs, `images` as
    Image structs with the bytes inline or only a path (under the media root)."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "b.jpg").write_bytes(JPEG)
    f = write_parquet(tmp_path / "train-00000-of-00001.parquet", [{
        "conversation_id": "c1", "model": "m",
        "conversation": [[{"role": "user", "content": "What is this?"}, {"role": "assistant", "content": "x" * 40}],
                         [{"role": "user", "content": "And that?"}, {"role": "assistant", "content": "y" * 8}]],
        "images": [{"bytes": PNG, "path": None}, {"bytes": None, "path": "b.jpg"}]}])
    rs = load_dataset(f, "arena", task("image-chat"), media_root=media)
    assert [(r.prompt, r.expected_output_tokens) for r in rs] == [("What is this?", 10), ("And that?", 2)]
    assert rs[0].images == [Media(PNG, "image/png"), Media(JPEG, "image/jpeg")] and rs[0].history == []
    assert rs[1].images == [] and [m["role"] for m in rs[1].history] == ["user", "assistant"]
    body = build_body(rs[0], "m", Sampling(), stream=True)
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert parts[2]["image_url"]["url"] == "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()


def test_llava_video_rows_with_the_video_file_as_the_clip(tmp_path):
    videos = tmp_path / "videos"
    (videos / "academic").mkdir(parents=True)
    (videos / "academic" / "v1.mp4").write_bytes(MP4)
    rows = [llava_row("academic/v1.mp4"), llava_row("academic/missing.mp4"),
            {"id": "x", "video": "academic/v1.mp4", "conversations": [{"from": "gpt", "value": "no question"}]}]
    f = write(tmp_path / "0_30_s_academic_oe_v0_1_qa_processed.json", rows, jsonl=False)
    rs = load_dataset(f, "llava-video", task("video-chat"), media_root=videos, limit=1)
    assert len(rs) == 1  # the second row's video is never read
    r = rs[0]
    assert (r.prompt, r.expected_output_tokens, r.history, r.images) == ("What happens?", 10, [], [])
    assert r.frames == [Media(MP4, "video/mp4")]
    with pytest.raises(DatasetError, match="missing.mp4"):
        load_dataset(f, "llava-video", task("video-chat"), media_root=videos)


def test_media_root_defaults_to_the_dataset_files_directory(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "v.webm").write_bytes(MP4)
    (tmp_path / "clips" / "img.bin").write_bytes(PNG)
    f = write(tmp_path / "d.jsonl", [llava_row("clips/v.webm", question="<video>Why?")])
    r = load_dataset(f, "llava-video", task("video-chat"))[0]
    assert r.prompt == "Why?" and r.frames == [Media(MP4, "video/webm")]
    (tmp_path / "sub").mkdir()
    g = write(tmp_path / "sub" / "g.jsonl", [{"prompt": "p", "images": ["img.bin"]}])
    assert load_dataset(g, "jsonl", task("image-chat"), media_root=tmp_path / "clips")[0].images == [Media(PNG)]
    with pytest.raises(DatasetError, match="cannot read media file"):
        load_dataset(g, "jsonl", task("image-chat"))  # not beside the file


def test_video_file_clip_body_and_frame_list_body(tmp_path):
    """A clip that is one video file goes as its own data URL; image frames keep vLLM's video/jpeg form."""
    f = write(tmp_path / "d.jsonl", [llava_row("v.mp4")])
    (tmp_path / "v.mp4").write_bytes(MP4)
    r = plan(task("video-chat"), 1, 0, Sampling(), load_dataset(f, "llava-video", task("video-chat")))[0]
    parts = build_body(r, "m", Sampling(), stream=False)["messages"][-1]["content"]
    assert parts == [{"type": "text", "text": "What happens?"},
                     {"type": "video_url",
                      "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(MP4).decode()}}]
    r.frames = [Media(PNG), Media(PNG)]
    url = build_body(r, "m", Sampling(), stream=False)["messages"][-1]["content"][-1]["video_url"]["url"]
    assert url == "data:video/jpeg;base64," + ",".join([base64.b64encode(PNG).decode()] * 2)


def test_prompt_datasets_for_diffusion_tasks(tmp_path):
    t2i = write_parquet(tmp_path / "open-image-preferences.parquet",
                        [{"prompt": " a red fox ", "category": "animals"}, {"prompt": "a castle", "category": "x"}])
    rs = load_dataset(t2i, "prompts", task("text-to-image"))
    assert [(r.prompt, r.api, r.images) for r in rs] == [("a red fox", "image", []), ("a castle", "image", [])]
    (tmp_path / "evalcrafter_prompts.txt").write_text("A cat surfing.\n\n  A drone shot of a city.  \n")
    rs = load_dataset(tmp_path / "evalcrafter_prompts.txt", "prompts", task("text-to-video"))
    assert [(r.prompt, r.api) for r in rs] == [("A cat surfing.", "video"), ("A drone shot of a city.", "video")]
    fallbacks = write(tmp_path / "t.jsonl", [{"caption": "by caption", "text": "no"}, {"text": "by text"},
                                              {"prompt": "", "caption": "empty prompt"}])
    assert [r.prompt for r in load_dataset(fallbacks, "prompts", task("video"))] == [
        "by caption", "by text", "empty prompt"]
    (tmp_path / "start.png").write_bytes(PNG)
    i2v = write_parquet(tmp_path / "i2v.parquet", [
        {"prompt": "zoom in", "image": {"bytes": PNG, "path": "x.png"}},
        {"prompt": "pan left", "image": {"bytes": None, "path": "start.png"}}])
    rs = load_dataset(i2v, "prompts", task("image-to-video"))
    assert [(r.prompt, r.images) for r in rs] == [("zoom in", [Media(PNG)]), ("pan left", [Media(PNG)])]
    assert all(r.images == [] for r in load_dataset(i2v, "prompts", task("text-to-video")))


def test_dataset_rows_are_sent_with_the_runs_diffusion_parameters(tmp_path):
    """Image-to-video from a Parquet prompt set, against the diffusion server STAND-IN: every request
    is the multipart create with the row's PNG as `input_reference`, at the run's size."""
    f = write_parquet(tmp_path / "i2v.parquet", [{"prompt": f"prompt {i}", "image": {"bytes": PNG, "path": None}}
                                                 for i in range(3)])
    server = DiffusionStandIn()
    try:
        cfg = RunConfig(base_url=server.url, task="image-to-video", num_requests=4, no_energy=True, progress=False,
                        dataset=str(f), dataset_format="prompts", out_dir=str(tmp_path / "out"),
                        diffusion=DiffusionParams(size="320x240", poll_interval_s=0.03))
        r, _ = asyncio.run(run(cfg))
    finally:
        server.stop()
    assert server.violations == []
    assert r["completed"] == 4 and r["dataset"]["kind"] == "prompts"
    assert {j["size"] for j in server.jobs.values()} == {"320x240"}


# ---- errors ----------------------------------------------------------------------------------------

def data_file(name, data):
    """A maker of the file `name` holding `data` (str or bytes) in a test's tmp_path."""
    def make(tmp_path):
        f = tmp_path / name
        f.write_bytes(data.encode() if isinstance(data, str) else data)
        return f
    return make


def rows_file(name, *rows):
    """A maker of the file `name` holding `rows`: Parquet or JSONL, by its suffix."""
    if name.endswith(".parquet"):
        return lambda tmp_path: write_parquet(tmp_path / name, list(rows))
    return lambda tmp_path: write(tmp_path / name, list(rows))


BAD_PARQUET = data_file("bad.parquet", b"PAR1 not really parquet")


@pytest.mark.parametrize("make,fmt,name,msg", [
    (data_file("a.jsonl", "{not json\n"), "jsonl", "chat", "not JSON"),
    (rows_file("a.jsonl", {"text": "no prompt"}), "jsonl", "chat", "prompt"),
    (rows_file("a.jsonl", {"prompt": "p", "output_tokens": -1}), "jsonl", "chat", "output_tokens"),
    (rows_file("a.jsonl", {"prompt": "p", "images": ["missing.png"]}), "jsonl", "chat", "cannot read media file"),
    (rows_file("a.jsonl", {"prompt": "p", "images": [{"bytes": "text"}]}), "jsonl", "chat", "not binary"),
    (rows_file("a.jsonl", {"prompt": "p", "images": [7]}), "jsonl", "chat", "media entry 7"),
    (rows_file("a.jsonl", {"prefix": "a"}), "fim", "code", "suffix"),
    (rows_file("a.jsonl"), "jsonl", "chat", "no usable"),
    (data_file("a.jsonl", '{"prompt": "caf\u00e9"}\n'.encode("latin-1")), "jsonl", "chat", "not UTF-8"),
    (BAD_PARQUET, "prompts", "text-to-image", "as Parquet"),
    (rows_file("a.parquet", {"title": "no prompt"}), "prompts", "text-to-image", "`prompt`, `caption` or `text`"),
    (rows_file("a.parquet", {"prompt": "no image"}), "prompts", "image-to-video", "needs an `image`"),
    (rows_file("a.parquet", {"prompt": "p", "image": {"bytes": None, "path": None}}), "prompts", "image-to-video",
     "media entry {'bytes': None, 'path': None}"),
    (rows_file("a.parquet", llava_row("gone.mp4")), "llava-video", "video-chat", "cannot read media file .*gone.mp4"),
    (rows_file("a.jsonl", {"conversations": []}), "llava-video", "video-chat", "need `video`"),
    (rows_file("a.jsonl", {"conversation": "not turns"}), "arena", "image-chat", "not in the arena format"),
])
def test_bad_inputs_raise_one_line_errors(tmp_path, make, fmt, name, msg):
    with pytest.raises(DatasetError, match=msg) as e:
        load_dataset(make(tmp_path), fmt, task(name))
    assert "\n" not in str(e.value)


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    f = write_parquet(tmp_path / "d.parquet", [{"prompt": "p"}])
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError, match=r"pip install 'jouletrace\[loadgen\]'") as e:
        load_dataset(f, "prompts", task("text-to-image"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("make,args,msg", [
    (data_file("bad.jsonl", "{nope\n"), [], "not JSON"),
    (lambda tmp_path: tmp_path / "none.jsonl", [], "does not exist"),
    (BAD_PARQUET, ["--dataset-format", "prompts", "--task", "text-to-image"], "as Parquet"),
    (rows_file("d.jsonl", llava_row("v.mp4")), ["--dataset-format", "llava-video", "--task", "video-chat",
                                                "--media-root", "/nonexistent-media-root"],
     "nonexistent-media-root/v.mp4"),
])
def test_cli_bad_dataset_is_one_line_exit_2(tmp_path, capsys, make, args, msg):
    code = jouletrace_main(["loadgen", "run", "--base-url", "http://127.0.0.1:1", "--no-energy", "--quiet",
                            "--out", str(tmp_path / "out"), "--dataset", str(make(tmp_path)), *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_csv_fields_may_hold_line_breaks(tmp_path):
    f = tmp_path / "prompts.csv"
    f.write_text('prompt\n"a cat\non a mat"\nplain\n')
    got = load_dataset(f, "prompts", task("text-to-image"))
    assert [r.prompt for r in got] == ["a cat\non a mat", "plain"]
