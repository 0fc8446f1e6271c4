"""The dataflow: one definition for live runs and replays (see ``flows.dataflow``)."""
