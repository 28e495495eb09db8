"""Label Studio labeling interfaces, generated from the aspect list (and committed under label_studio/).

Two interfaces:

* ``sets-K.xml`` — an image set of up to K images: per image a 1-5 rating on each
  aspect, a ranking of the set (List + Ranker), and a comment. ``sets-K-ai.xml``
  also shows the AI judgement (``--show-ai``); audits hide it by default.
* ``pairwise.xml`` — two images and, per aspect, Left / Right / Tie (Label Studio's
  Pairwise tag has no tie, hence Choices).

Regenerate with ``python -m vprefer.audit.interfaces`` (in a checkout); a test checks the
committed files match. :func:`interface_path` finds one by name the way every recipe is
found (``./label_studio/interfaces/NAME.xml``, then the shipped copy; see ``vprefer.recipes``).
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from vprefer.recipes import REPO, find_asset
from vprefer.schema import ASPECTS

TITLES = {"prompt_following": "Prompt following", "aesthetics": "Aesthetics", "fidelity": "Fidelity (no artefacts)",
          "harmlessness": "Harmlessness"}


def sets_xml(k: int = 4, aspects=ASPECTS, scale_max: int = 5, show_ai: bool = False) -> str:
    lines = ["<View>", '  <Header value="$prompt"/>']
    if show_ai:
        lines.append('  <Text name="ai_judgement" value="$ai_judgement"/>')
    lines.append('  <View style="display: flex; flex-wrap: wrap; gap: 12px">')
    for i in range(1, k + 1):
        lines += ['    <View style="width: 240px">', f'      <Header value="Image {i}" size="5"/>',
                  f'      <Image name="img{i}" value="$image_{i}" maxWidth="240px"/>']
        for a in aspects:
            lines.append(f'      <Header value={quoteattr(TITLES.get(a, a))} size="6"/>')
            lines.append(f'      <Rating name="img{i}_{a}" toName="img{i}" maxRating="{scale_max}" icon="star" size="small"/>')
        lines.append("    </View>")
    lines += ["  </View>", '  <Header value="Rank the images, best first" size="4"/>',
              '  <List name="images" value="$items" title="Images"/>', '  <Ranker name="rank" toName="images"/>',
              '  <TextArea name="comment" toName="img1" placeholder="Comment (optional)" rows="2"/>', "</View>"]
    return "\n".join(lines) + "\n"


def pairwise_xml(aspects=ASPECTS) -> str:
    lines = ["<View>", '  <Header value="$prompt"/>', '  <View style="display: flex; gap: 12px">',
             '    <Image name="left" value="$image_a" maxWidth="360px"/>',
             '    <Image name="right" value="$image_b" maxWidth="360px"/>', "  </View>"]
    for a in aspects:
        lines += [f'  <Header value={quoteattr(TITLES.get(a, a))} size="5"/>',
                  f'  <Choices name="{a}" toName="left" choice="single" showInline="true" required="true">',
                  '    <Choice value="Left"/>', '    <Choice value="Right"/>', '    <Choice value="Tie"/>', "  </Choices>"]
    lines += ['  <TextArea name="comment" toName="left" placeholder="Comment (optional)" rows="2"/>', "</View>"]
    return "\n".join(lines) + "\n"


def committed() -> dict[str, str]:
    return {"sets-4.xml": sets_xml(4), "sets-4-ai.xml": sets_xml(4, show_ai=True), "pairwise.xml": pairwise_xml()}


def interface_path(name_or_path: str | Path) -> Path:
    """A labeling interface's XML file, by path or by name (``sets-4``, ``pairwise``)."""
    return find_asset(name_or_path, "label_studio/interfaces", (".xml",), what="Label Studio interface")


def interface_xml(name_or_path: str | Path) -> str:
    return interface_path(name_or_path).read_text()


def write(folder: Path = REPO / "label_studio" / "interfaces") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, xml in committed().items():
        (folder / name).write_text(xml)
        out.append(folder / name)
    return out


if __name__ == "__main__":
    for p in write():
        print(p)
