/*
 * Lifts the retention of librdkafka's mock cluster for one topic.
 *
 * The mock keeps at most 5 MB or 100,000 message sets per partition (rdkafka_mock.c, not
 * configurable) and silently drops the oldest beyond that, so a benchmark topic could not hold the
 * millions of updates it is filled with. This sets both limits on every partition of `topic`.
 * It reads librdkafka's internal mock structures (rdkafka_mock_int.h of the librdkafka that
 * rdkafka-sys builds), so it is compiled against exactly that source.
 */
#include "rdkafka_int.h"
#include "rdkafka_mock_int.h"

/* Returns the number of partitions changed, or -1 when the topic does not exist. */
int coinstream_mock_set_retention(rd_kafka_mock_cluster_t *mcluster,
                                  const char *topic,
                                  size_t max_bytes,
                                  size_t max_message_sets) {
        rd_kafka_mock_topic_t *mtopic;
        int i, n = -1;

        mtx_lock(&mcluster->lock);
        mtopic = rd_kafka_mock_topic_find(mcluster, topic);
        if (mtopic) {
                for (i = 0; i < mtopic->partition_cnt; i++) {
                        mtopic->partitions[i].max_size = max_bytes;
                        mtopic->partitions[i].max_cnt  = max_message_sets;
                }
                n = mtopic->partition_cnt;
        }
        mtx_unlock(&mcluster->lock);
        return n;
}
