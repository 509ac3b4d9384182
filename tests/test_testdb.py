import pytest

pytestmark = pytest.mark.mongo


def test_server_answers_and_database_is_fresh(mongo_db):
    assert mongo_db.list_collection_names() == []
    mongo_db.things.insert_many([{"_id": i, "n": i} for i in range(10)])
    assert mongo_db.things.count_documents({}) == 10
