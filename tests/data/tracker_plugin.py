"""tracker_plugin.py: a plain IoU tracker with an option of its own (`reidkit video --tracker iou`)."""
from dataclasses import dataclass

import numpy as np

from reidkit.video.trackers import FrameTracks, Match, register_tracker
from reidkit.video.trackers.base import box_iou


@dataclass
class IoUOptions:
    min_iou: float = 0.3                                  # --tracker-option min_iou=0.5


@register_tracker("iou", options=IoUOptions)
class IoUTracker:
    """Each box continues the track of the last frame it overlaps most (at min_iou or more), else starts one."""

    def __init__(self, options):
        self.min_iou, self.next_id, self.tracks = options.min_iou, 1, {}   # {track id: its last box}

    def needs_features(self, boxes, scores, budget=0):
        return np.zeros(len(boxes), bool)                 # boxes alone: no crop to embed

    def update(self, boxes, scores, features):
        boxes, ids = np.asarray(boxes, float).reshape(-1, 4), list(self.tracks)
        iou = box_iou(boxes, np.array(list(self.tracks.values())).reshape(-1, 4))
        now, matched = {}, []
        for d, box in enumerate(boxes):
            j = int(np.argmax(iou[d])) if ids else -1
            if j < 0 or iou[d, j] < self.min_iou:
                tid, self.next_id = str(self.next_id), self.next_id + 1
            else:
                tid, iou[:, j] = ids[j], -1.0             # a track takes one box
            now[tid] = box.tolist()
            matched.append(Match(tid, d, True, tuple(box.tolist())))
        ended, self.tracks = [t for t in self.tracks if t not in now], now
        return FrameTracks(matched, ended)

    def live_ids(self):
        return list(self.tracks)

    def state_dict(self):                                 # JSON-able: an interrupted ingestion resumes exactly
        return {"next_id": self.next_id, "tracks": self.tracks}

    def load_state_dict(self, state):
        self.next_id, self.tracks = int(state["next_id"]), dict(state["tracks"])
