"""The data store: latest sample per point, history, staleness and change tracking."""

from appliance.store.datastore import DataStore, Subscription, UnknownPointError
from appliance.store.sample import Quality, Sample, Value

__all__ = ["DataStore", "Quality", "Sample", "Subscription", "UnknownPointError", "Value"]
